"""Checkpoint layouts: detection, exact round trips, and agreement with timm and open_clip."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import randomize, rel_err, released_config, tiny_clip_config, tiny_vision_config
from peers import TIMM_NAMES, open_clip_skeleton
from perception_encoder.clip import CLIP
from perception_encoder.configs import CLIPConfig, get_model_info, list_models
from perception_encoder.errors import CheckpointError
from perception_encoder.vision import VisionTransformer
from perception_encoder.weights import formats as F

OPEN_CLIP_NAMES = {
    "PE-Core-T16-384": "PE-Core-T-16-384",
    "PE-Core-S16-384": "PE-Core-S-16-384",
    "PE-Core-B16-224": "PE-Core-B-16",
    "PE-Core-L14-336": "PE-Core-L-14-336",
    "PE-Core-G14-448": "PE-Core-bigG-14-448",
}

# structural variants: CLS or not, LayerScale or not, attention pooling or token output
VISION_CONFIGS = {
    "core-like": tiny_vision_config(),
    "no-cls-ls-tokens": tiny_vision_config(
        use_cls_token=False, ls_init_value=0.1, use_ln_post=False, pool_type="none", output_dim=None
    ),
    "no-cls-attn": tiny_vision_config(use_cls_token=False),
    "PE-Core-T16-384/d1": released_config("PE-Core-T16-384", depth=1).vision,
    "PE-Spatial-T16-512/d1": released_config("PE-Spatial-T16-512", depth=1),
    "PE-Lang-L14-448/d1": dataclasses.replace(released_config("PE-Lang-L14-448", depth=1), image_size=56),
}
CLIP_CONFIGS = {
    "tiny": tiny_clip_config(),
    "tiny-no-cls-ls": tiny_clip_config(use_cls_token=False, ls_init_value=0.1),
}


def _equal(a: dict, b: dict) -> None:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:10]
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def vision_models():
    return {
        name: randomize(VisionTransformer(cfg), seed=i)
        for i, (name, cfg) in enumerate(VISION_CONFIGS.items())
    }


@pytest.fixture(scope="module")
def clip_models():
    return {name: randomize(CLIP(cfg), seed=i) for i, (name, cfg) in enumerate(CLIP_CONFIGS.items())}


# --- detection and round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VISION_CONFIGS))
@pytest.mark.parametrize("fmt", ["reference", "timm", "native"])
def test_vision_round_trip_is_exact(vision_models, name, fmt):
    native = vision_models[name].state_dict()
    out = F.from_native(native, fmt)
    assert F.detect_format(out) == ("timm" if fmt == "timm" else "reference")
    _equal(F.to_native(out), native)
    _equal(F.convert_state_dict(F.to_native(out), fmt), out)  # and back again


@pytest.mark.parametrize("name", list(CLIP_CONFIGS))
@pytest.mark.parametrize("fmt", ["reference", "open_clip", "native"])
def test_clip_round_trip_is_exact(clip_models, name, fmt):
    native = clip_models[name].state_dict()
    out = F.from_native(native, fmt)
    assert F.detect_format(out) == fmt
    _equal(F.to_native(out), native)
    _equal(F.convert_state_dict(out, fmt), out)
    # every layout converts to every other
    for other in ("reference", "open_clip", "native"):
        _equal(F.to_native(F.convert_state_dict(out, other)), native)


def test_reference_clip_layout_keeps_text_at_top_level(clip_models):
    native = clip_models["tiny"].state_dict()
    ref = F.from_native(native, "reference")
    assert "token_embedding.weight" in ref and "text_projection" in ref and "ln_final.weight" in ref
    assert "positional_embedding" in ref and "visual.positional_embedding" in ref
    assert torch.equal(ref["positional_embedding"], native["text.positional_embedding"])
    assert not any(k.startswith("text.") for k in ref)
    assert "logit_scale" in ref


def test_clip_to_timm_keeps_the_vision_tower(clip_models):
    native = clip_models["tiny"].state_dict()
    timm_sd = F.from_native(native, "timm")
    assert F.detect_format(timm_sd) == "timm"
    _equal(F.to_native(timm_sd), F.vision_part(native))


def test_timm_layout_details(vision_models):
    model = vision_models["core-like"]
    t = F.from_native(model.state_dict(), "timm")
    w = model.config.width
    assert t["cls_token"].shape == (1, 1, w)
    assert t["pos_embed"].shape == (1, model.config.grid_size**2 + 1, w)
    assert torch.equal(t["head.weight"], model.proj.detach().t())
    assert torch.count_nonzero(t["head.bias"]) == 0
    in_proj = model.attn_pool.attn.in_proj_weight.detach()
    assert torch.equal(t["attn_pool.q.weight"], in_proj[:w])
    assert torch.equal(t["attn_pool.kv.weight"], in_proj[w:])
    assert "blocks.0.attn.qkv.weight" in t and "blocks.1.mlp.fc2.bias" in t
    ls = F.from_native(vision_models["no-cls-ls-tokens"].state_dict(), "timm")
    assert "blocks.0.gamma_1" in ls and "cls_token" not in ls and "head.weight" not in ls


def test_open_clip_of_a_vision_tower_is_refused(vision_models):
    with pytest.raises(CheckpointError, match="open_clip layout is for CLIP"):
        F.from_native(vision_models["core-like"].state_dict(), "open_clip")


def test_unwraps_wrappers_and_prefixes(clip_models):
    native = clip_models["tiny"].state_dict()
    ref = F.from_native(native, "reference")
    for wrapped in (
        {"state_dict": {f"module.{k}": v for k, v in ref.items()}, "epoch": 3},
        {"weights": ref},
        {"model": {f"_orig_mod.{k}": v for k, v in ref.items()}, "optimizer": {"lr": 1.0}},
        {"module.state_dict": 1, "state_dict": {"module.module." + k: v for k, v in ref.items()}},
    ):
        assert F.detect_format(wrapped) == "reference"
        _equal(F.to_native(wrapped), native)


def test_derived_buffers_are_dropped(clip_models):
    native = clip_models["tiny"].state_dict()
    oc = F.from_native(native, "open_clip")
    oc["text.attn_mask"] = torch.zeros(16, 16)
    oc["visual.trunk.rope.pos_embed"] = torch.zeros(3)
    _equal(F.to_native(oc), native)


def test_unknown_layouts_and_empty_dicts_raise():
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        F.detect_format({"encoder.layer.0.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="holds no tensors"):
        F.detect_format({"epoch": 3})
    with pytest.raises(CheckpointError, match="expected a dict"):
        F.unwrap_state_dict([torch.zeros(1)])
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        F.from_native({"conv1.weight": torch.zeros(1)}, "onnx")


def test_nonzero_timm_head_bias_is_refused(vision_models):
    t = F.from_native(vision_models["core-like"].state_dict(), "timm")
    t["head.bias"] = t["head.bias"] + 1
    with pytest.raises(CheckpointError, match="non-zero head.bias"):
        F.to_native(t)


# --- the real key sets of timm and open_clip (full size, on the meta device) ---------------------------


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("name", [n for n in list_models() if n in TIMM_NAMES])  # released towers
def test_timm_key_set_matches_timm_full_size(name):
    timm = pytest.importorskip("timm")
    v = get_model_info(name).vision
    with torch.device("meta"):
        ours = VisionTransformer(v)
        peer = timm.create_model(TIMM_NAMES[name], num_classes=v.output_dim or 0)
    assert _shapes(F.from_native(ours.state_dict(), "timm")) == _shapes(peer.state_dict())
    assert _shapes(F.to_native(peer.state_dict())) == _shapes(ours.state_dict())


@pytest.mark.parametrize("name", list(OPEN_CLIP_NAMES))
def test_open_clip_key_set_matches_open_clip_full_size(name):
    open_clip = pytest.importorskip("open_clip")
    with torch.device("meta"):
        ours = CLIP(get_model_info(name).config)
        peer = open_clip.create_model(OPEN_CLIP_NAMES[name], device="meta")
    assert _shapes(F.from_native(ours.state_dict(), "open_clip")) == _shapes(peer.state_dict())
    assert _shapes(F.to_native(peer.state_dict())) == _shapes(ours.state_dict())


# --- same numbers as the peers (native size) -----------------------------------------------------------


def _timm_model(cfg):
    """timm's PE tower with ``cfg``'s structure and sizes (native size, so positions agree)."""
    import timm

    if cfg.pool_type == "attn":
        base = "vit_pe_core_tiny_patch16_384"
    else:
        base = "vit_pe_lang_gigantic_patch14_448" if cfg.ls_init_value else "vit_pe_spatial_tiny_patch16_512"
    return timm.create_model(
        base,
        depth=cfg.depth,
        embed_dim=cfg.width,
        num_heads=cfg.heads,
        patch_size=cfg.patch_size,
        img_size=cfg.image_size,
        mlp_ratio=cfg.mlp_dim / cfg.width,
        ref_feat_shape=(cfg.grid_size, cfg.grid_size),
        num_classes=cfg.output_dim or 0,
        class_token=cfg.use_cls_token,
        rope_grid_offset=1.0 if cfg.use_cls_token else 0.0,
        init_values=cfg.ls_init_value,
    ).eval()


def _timm_out(model, cfg, x):
    return model(x) if cfg.pool_type == "attn" else model.forward_features(x)


@pytest.mark.parametrize("name", list(VISION_CONFIGS))
@torch.no_grad()
def test_timm_format_loads_into_timm_with_same_outputs(vision_models, name):
    pytest.importorskip("timm")
    ours = vision_models[name]
    cfg = ours.config
    peer = _timm_model(cfg)
    peer.load_state_dict(F.from_native(ours.state_dict(), "timm"), strict=True)
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1))
    expected = ours(x)
    assert rel_err(_timm_out(peer, cfg, x), expected) < 1e-5
    if cfg.pool_type == "attn":
        assert rel_err(peer.forward_features(x), ours.forward_features(x, norm=True)) < 1e-5


@pytest.mark.parametrize("name", ["core-like", "no-cls-ls-tokens", "PE-Spatial-T16-512/d1"])
@torch.no_grad()
def test_timm_state_dict_loads_into_ours_with_same_outputs(name):
    pytest.importorskip("timm")
    cfg = VISION_CONFIGS[name]
    peer = _timm_model(cfg)
    torch.manual_seed(3)
    for n, p in peer.named_parameters():  # timm's init leaves norms at 1/0: perturb everything
        p.add_(torch.randn_like(p) * 0.02 * (0 if n == "head.bias" else 1))
    ours = VisionTransformer(cfg).eval()
    ours.load_state_dict(F.to_native(peer.state_dict()), strict=True)
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(2))
    assert rel_err(ours(x), _timm_out(peer, cfg, x)) < 1e-5


def _tokens(config: CLIPConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 49406, (3, config.text.context_length), generator=g)
    for row, eot in enumerate((5, 11, config.text.context_length - 1)):
        ids[row, 0], ids[row, eot], ids[row, eot + 1 :] = 49406, 49407, 0
    return ids


@torch.no_grad()
def test_open_clip_format_matches_open_clip_both_ways():
    pytest.importorskip("open_clip")
    config = released_config("PE-Core-T16-384", depth=1, text_depth=1)
    ours = randomize(CLIP(config), seed=5)
    peer = open_clip_skeleton(config, "vit_pe_core_tiny_patch16_384")
    peer.load_state_dict(F.from_native(ours.state_dict(), "open_clip"), strict=True)
    x = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(6))
    ids = _tokens(config)
    assert rel_err(peer.encode_image(x), ours.encode_image(x)) < 1e-5
    assert rel_err(peer.encode_text(ids), ours.encode_text(ids)) < 1e-5
    assert torch.equal(peer.logit_scale, ours.logit_scale)

    # and open_clip's own weights load into ours
    torch.manual_seed(7)
    for n, p in peer.named_parameters():
        p.add_(torch.randn_like(p) * 0.02 * (0 if n.endswith("head.bias") else 1))
    back = CLIP(config).eval()
    back.load_state_dict(F.to_native(peer.state_dict()), strict=True)
    assert rel_err(back.encode_image(x), peer.encode_image(x)) < 1e-5
    assert rel_err(back.encode_text(ids), peer.encode_text(ids)) < 1e-5

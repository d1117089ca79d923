"""create_model / load / save / convert / inspect_checkpoint, and the checkpoint reader's error messages."""

from __future__ import annotations

import dataclasses
import os
import pickle

import pytest
import torch
from safetensors import safe_open

import perception_encoder.factory as factory
from conftest import randomize, rel_err, tiny_clip_config, tiny_vision_config
from perception_encoder import configs
from perception_encoder.clip import CLIP
from perception_encoder.configs import ModelInfo, UnknownModelError, config_from_dict, get_model_info
from perception_encoder.errors import CheckpointError
from perception_encoder.vision import VisionTransformer
from perception_encoder.weights import files as io
from perception_encoder.weights import formats as F

TINY_CLIP = "Test-Tiny-CLIP"
TINY_VISION = "Test-Tiny-Vision"


@pytest.fixture
def registered(monkeypatch):
    """Tiny models in the registry for the duration of one test."""
    monkeypatch.setitem(configs._REGISTRY, TINY_CLIP, ModelInfo(TINY_CLIP, "custom", tiny_clip_config()))
    monkeypatch.setitem(
        configs._REGISTRY,
        TINY_VISION,
        ModelInfo(TINY_VISION, "custom", tiny_vision_config(ls_init_value=0.1)),
    )


def _pixels(size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _ids() -> torch.Tensor:
    return torch.tensor([[49406, 5, 6, 49407, 0, 0], [49406, 7, 8, 9, 10, 49407]])


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --- create_model / count_parameters -------------------------------------------------------------------


def test_create_model_kinds_dtype_and_parameter_count(registered):
    clip = factory.create_model(TINY_CLIP)
    assert isinstance(clip, CLIP)
    vision = factory.create_model(TINY_CLIP, vision_only=True, dtype=torch.bfloat16)
    assert isinstance(vision, VisionTransformer)
    assert vision.conv1.weight.dtype == torch.bfloat16
    assert isinstance(factory.create_model(tiny_vision_config()), VisionTransformer)
    assert factory.count_parameters(TINY_CLIP) == sum(p.numel() for p in clip.parameters())
    assert factory.count_parameters(TINY_CLIP, vision_only=True) == sum(
        p.numel() for p in vision.parameters()
    )
    real = VisionTransformer(get_model_info("PE-Spatial-T16-512").config)
    assert factory.count_parameters("PE-Spatial-T16-512") == sum(p.numel() for p in real.parameters())
    with pytest.raises(TypeError, match="registered model name or a VisionConfig"):
        factory.create_model(3)


def test_registered_name_wins_over_a_folder_of_the_same_name(tmp_path, monkeypatch, registered):
    monkeypatch.chdir(tmp_path)
    (tmp_path / TINY_VISION).mkdir()
    assert isinstance(factory.load(TINY_VISION, pretrained=False), VisionTransformer)


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(UnknownModelError, match="Did you mean 'PE-Core-B16-224'"):
        factory.load("PE-Core-B16-225")
    with pytest.raises(UnknownModelError, match="pe models"):
        factory.create_model("no-such-model")


# --- save / load ---------------------------------------------------------------------------------------


@torch.no_grad()
def test_save_and_load_by_path_round_trip(tmp_path, tiny_clip, tiny_vision):
    path = factory.save(tiny_clip, tmp_path / "clip.safetensors")
    assert (tmp_path / "clip.json").is_file()
    assert (
        config_from_dict(__import__("json").loads((tmp_path / "clip.json").read_text())) == tiny_clip.config
    )
    with safe_open(str(path), framework="pt") as f:
        assert io.CONFIG_METADATA_KEY in f.metadata()
    loaded = factory.load(path)
    assert isinstance(loaded, CLIP) and not loaded.training
    assert loaded.config == tiny_clip.config
    _same_params(loaded, tiny_clip)
    assert torch.equal(loaded.encode_image(_pixels()), tiny_clip.encode_image(_pixels()))
    assert torch.equal(loaded.encode_text(_ids()), tiny_clip.encode_text(_ids()))

    # the config also travels inside the safetensors file alone
    (tmp_path / "clip.json").unlink()
    assert factory.load(str(path)).config == tiny_clip.config

    factory.save(tiny_vision, tmp_path / "vision.pt")
    v = factory.load(tmp_path / "vision.pt")
    assert isinstance(v, VisionTransformer)
    _same_params(v, tiny_vision)
    with pytest.raises(ValueError, match="unsupported extension"):
        factory.save(tiny_vision, tmp_path / "vision.npz")


@torch.no_grad()
@pytest.mark.parametrize("layout", ["reference", "open_clip", "native"])
def test_load_registered_name_from_any_layout(tmp_path, registered, tiny_clip, layout):
    path = tmp_path / ("ckpt.pt" if layout == "reference" else "ckpt.safetensors")
    io.write_checkpoint(F.from_native(tiny_clip.state_dict(), layout), path)
    model = factory.load(TINY_CLIP, checkpoint=path)
    assert isinstance(model, CLIP)
    _same_params(model, tiny_clip)
    # the same CLIP checkpoint feeds a vision tower
    vision = factory.load(TINY_CLIP, checkpoint=path, vision_only=True)
    assert isinstance(vision, VisionTransformer)
    assert torch.equal(vision(_pixels()), tiny_clip.encode_image(_pixels()))


@torch.no_grad()
def test_timm_checkpoint_loads_into_a_vision_tower(tmp_path, registered):
    model = randomize(VisionTransformer(get_model_info(TINY_VISION).config))
    path = tmp_path / "model.safetensors"
    io.write_checkpoint(F.from_native(model.state_dict(), "timm"), path)
    loaded = factory.load(TINY_VISION, checkpoint=path)
    assert torch.equal(loaded(_pixels()), model(_pixels()))


def test_reference_checkpoint_with_wrappers_and_legacy_serialisation(tmp_path, registered, tiny_clip):
    ref = F.from_native(tiny_clip.state_dict(), "reference")
    path = tmp_path / "wrapped.pth"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in ref.items()}}, path, _use_new_zipfile_serialization=False
    )
    _same_params(factory.load(TINY_CLIP, checkpoint=path), tiny_clip)


def test_vision_checkpoint_cannot_feed_a_clip_model(tmp_path, registered, tiny_clip):
    path = tmp_path / "vision.safetensors"
    io.write_checkpoint(F.vision_part(tiny_clip.state_dict()), path)
    with pytest.raises(CheckpointError, match="vision tower only.*vision_only=True"):
        factory.load(TINY_CLIP, checkpoint=path)


def test_checkpoint_for_another_model_names_keys_and_the_right_model(tmp_path):
    path = tmp_path / "spatial_t.pt"
    torch.save(VisionTransformer(get_model_info("PE-Spatial-T16-512").config).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        factory.load("PE-Spatial-S16-512", checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg and "does not fit PE-Spatial-S16-512" in msg
    assert "with another shape" in msg and "conv1.weight (192, 3, 16, 16) vs (384, 3, 16, 16)" in msg
    assert "looks like a checkpoint for PE-Spatial-T16-512, not PE-Spatial-S16-512" in msg

    core_t = tmp_path / "core_t_vision.pt"
    torch.save(VisionTransformer(get_model_info("PE-Core-T16-384").vision).state_dict(), core_t)
    with pytest.raises(CheckpointError) as err:
        factory.load("PE-Spatial-T16-512", checkpoint=core_t)
    msg = str(err.value)
    assert "14 unexpected key(s) (under proj, ln_post, attn_pool): proj" in msg
    assert "PE-Core-T16-384 (its vision tower only" in msg


def test_checkpoint_path_alone_uses_the_registered_config_when_shapes_match(tmp_path):
    cfg = get_model_info("PE-Spatial-T16-512").config
    model = VisionTransformer(cfg)
    path = tmp_path / "no_config_beside.pt"
    torch.save(model.state_dict(), path)
    loaded = factory.load(path)
    assert loaded.config == cfg  # heads (not visible in shapes) come from the registry
    info = factory.inspect_checkpoint(path)
    assert info["name"] == "PE-Spatial-T16-512" and info["family"] == "spatial"
    assert info["format"] == "reference" and info["kind"] == "vision" and info["config_source"] == "registry"
    assert info["parameters"] == factory.count_parameters("PE-Spatial-T16-512")
    assert (info["image_size"], info["patch_size"], info["vision_width"], info["vision_depth"]) == (
        512,
        16,
        192,
        12,
    )
    assert info["output_dim"] is None and info["cls_token"] and not info["layer_scale"]


def test_unregistered_checkpoint_without_config_warns_and_infers(tmp_path, tiny_clip):
    path = tmp_path / "bare.safetensors"
    io.write_checkpoint(tiny_clip.state_dict(), path)  # no config
    with pytest.warns(UserWarning, match="guessed head counts"):
        model = factory.load(path)
    inferred = model.config
    assert inferred.vision.width == 32 and inferred.vision.depth == 2 and inferred.vision.patch_size == 8
    assert inferred.vision.image_size == 32 and inferred.text.context_length == 16
    _same_params(model, tiny_clip)


# --- low memory and dtype ------------------------------------------------------------------------------


def test_load_assigns_checkpoint_tensors_and_never_materialises_random_weights(
    tmp_path, monkeypatch, registered, tiny_clip
):
    path = tmp_path / "ckpt.safetensors"
    factory.save(tiny_clip, path)
    given = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    monkeypatch.setattr(factory, "read_state_dict", lambda p: dict(given))
    init_devices = []
    real_init = torch.nn.init.xavier_uniform_
    monkeypatch.setattr(
        torch.nn.init,
        "xavier_uniform_",
        lambda t, *a, **k: (init_devices.append(t.device.type), real_init(t))[1],
    )
    model = factory.load(TINY_CLIP, checkpoint=path)
    assert init_devices and set(init_devices) == {"meta"}  # built on meta: no random weights in memory
    params = dict(model.named_parameters())
    for k, t in given.items():  # the parameters ARE the checkpoint's tensors, not copies
        assert params[k].data_ptr() == t.data_ptr(), k


@torch.no_grad()
def test_load_in_bfloat16(tmp_path, registered, tiny_clip):
    path = tmp_path / "ckpt.safetensors"
    factory.save(tiny_clip, path)
    model = factory.load(TINY_CLIP, checkpoint=path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model.encode_image(_pixels().bfloat16())
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), tiny_clip.encode_image(_pixels())) < 3e-2
    assert factory.load(TINY_CLIP, checkpoint=path, dtype="float16").logit_scale.dtype == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        factory.load(TINY_CLIP, checkpoint=path, dtype="int3")


def test_pretrained_false_is_random_and_reads_nothing(monkeypatch, registered):
    monkeypatch.setattr(factory, "read_state_dict", lambda p: pytest.fail("read a checkpoint"))
    model = factory.load(TINY_CLIP, pretrained=False)
    assert isinstance(model, CLIP) and not model.training
    assert isinstance(factory.load(TINY_CLIP, pretrained=False, vision_only=True), VisionTransformer)
    with pytest.raises(ValueError, match="cannot be combined"):
        factory.load(TINY_CLIP, pretrained=False, checkpoint="x.pt")


def test_bundled_weights_come_from_the_assets_dir(tmp_path, monkeypatch, tiny_vision):
    factory.save(tiny_vision, tmp_path / "tiny" / "weights.safetensors")
    monkeypatch.setattr(factory, "ASSETS_DIR", tmp_path)
    info = ModelInfo("Test-Bundled", "custom", tiny_vision.config, local_weights="tiny/weights.safetensors")
    monkeypatch.setitem(configs._REGISTRY, info.name, info)
    _same_params(factory.load("Test-Bundled"), tiny_vision)
    missing = ModelInfo(
        "Test-Bundled-Missing", "custom", tiny_vision.config, local_weights="nope.safetensors"
    )
    monkeypatch.setitem(configs._REGISTRY, missing.name, missing)
    with pytest.raises(CheckpointError, match="bundled weights file is missing"):
        factory.load("Test-Bundled-Missing")


def test_name_and_checkpoint_together_is_an_error(tmp_path, tiny_vision):
    path = factory.save(tiny_vision, tmp_path / "v.safetensors")
    with pytest.raises(ValueError, match="already a checkpoint"):
        factory.load(path, checkpoint=path)


# --- bad files -----------------------------------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def test_bad_files_give_clear_errors(tmp_path, registered, tiny_clip):
    good = tmp_path / "good.pt"
    torch.save(F.from_native(tiny_clip.state_dict(), "reference"), good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt is truncated or corrupt"):
        factory.load(TINY_CLIP, checkpoint=truncated)

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.safetensors is empty"):
        factory.load(TINY_CLIP, checkpoint=empty)

    for name, write in [
        ("code_zip.pt", lambda p: torch.save({"w": _RunsCode()}, p)),
        ("code_pickle.bin", lambda p: p.write_bytes(pickle.dumps({"w": _RunsCode()}, protocol=2))),
    ]:
        with pytest.raises(CheckpointError, match="carries code.*refused"):
            factory.load(TINY_CLIP, checkpoint=(write(tmp_path / name), tmp_path / name)[1])

    st = tmp_path / "good.safetensors"
    factory.save(tiny_clip, st)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is truncated or corrupt"):
        factory.load(TINY_CLIP, checkpoint=cut)

    wrong_ext = tmp_path / "weights.npz"
    wrong_ext.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint extension '\.npz'"):
        factory.load(TINY_CLIP, checkpoint=wrong_ext)
    swapped = tmp_path / "swapped.safetensors"
    swapped.write_bytes(data)
    with pytest.raises(CheckpointError, match="holds a PyTorch pickle, not safetensors"):
        factory.load(TINY_CLIP, checkpoint=swapped)
    swapped_back = tmp_path / "swapped.pt"
    swapped_back.write_bytes(st.read_bytes())
    with pytest.raises(CheckpointError, match="holds safetensors data"):
        factory.load(TINY_CLIP, checkpoint=swapped_back)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        factory.load(TINY_CLIP, checkpoint=garbage)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        factory.load(TINY_CLIP, checkpoint=tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        factory.load(str(tmp_path / "missing.safetensors"))
    bad_json = tmp_path / "good.json"
    bad_json.write_text('{"type": "vision", "width": "wide"}')
    with pytest.raises(CheckpointError, match=r"good\.json: not a valid model config"):
        factory.load(st)


def test_a_fifo_or_a_device_is_refused_without_opening_it(tmp_path, registered):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)  # opening it for reading would block forever
    for source in (fifo, "/dev/zero.pt"):
        if source == "/dev/zero.pt":
            source = tmp_path / "zero.safetensors"
            source.symlink_to("/dev/zero")  # reading it would never end
        with pytest.raises(CheckpointError, match="not a regular file"):
            factory.load(TINY_CLIP, checkpoint=source)
        with pytest.raises(CheckpointError, match="not a regular file"):
            factory.inspect_checkpoint(source)


def test_a_config_nested_too_deeply_is_refused(tmp_path, tiny_clip):
    st = factory.save(tiny_clip, tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text('{"type": "vision", "width": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match="nested too deeply"):
        factory.load(st)


def test_info_and_load_use_the_same_config_for_a_file(tmp_path, tiny_clip):
    """One rule decides: the saved config when it fits the shapes, else an error in both."""
    path = factory.save(tiny_clip, tmp_path / "m.safetensors")
    # heads do not show in shapes: the saved JSON decides them, for load and for info alike
    cfg = tiny_clip.config
    other_heads = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, heads=1))
    (tmp_path / "m.json").write_text(configs.config_to_json(other_heads))
    assert factory.load(path).visual.config.heads == 1
    facts = factory.inspect_checkpoint(path)
    assert (facts["vision_heads"], facts["config_source"]) == (1, "json")

    wrong = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, depth=3))
    (tmp_path / "m.json").write_text(configs.config_to_json(wrong))
    for call in (factory.load, factory.inspect_checkpoint):
        with pytest.raises(
            CheckpointError, match=r"config saved with .*m\.safetensors does not fit its weights.*depth 3"
        ):
            call(path)


# --- convert / inspect ---------------------------------------------------------------------------------


@torch.no_grad()
def test_convert_between_all_targets(tmp_path, registered, tiny_clip):
    src = factory.save(tiny_clip, tmp_path / "src.safetensors")
    ref = factory.convert(src, tmp_path / "ref.pt", to="reference", model=TINY_CLIP)
    assert F.detect_format(io.read_state_dict(ref)) == "reference"
    oc = factory.convert(ref, tmp_path / "open_clip_model.safetensors", to="open_clip")
    assert F.detect_format(io.read_state_dict(oc)) == "open_clip"
    back = factory.convert(oc, tmp_path / "back.safetensors", to="safetensors")
    _same_params(factory.load(back), tiny_clip)
    assert io.read_config(back) == tiny_clip.config

    timm_file = factory.convert(back, tmp_path / "timm.safetensors", to="timm")
    timm_sd = io.read_state_dict(timm_file)
    assert F.detect_format(timm_sd) == "timm" and "head.bias" in timm_sd
    assert io.read_config(timm_file) == tiny_clip.config.vision
    vision = factory.load(timm_file)
    assert torch.equal(vision(_pixels()), tiny_clip.encode_image(_pixels()))

    # a vision-only model name takes the vision tower out of a CLIP checkpoint
    info = ModelInfo("Test-Tiny-Tower", "custom", tiny_clip.config.vision)
    configs._REGISTRY[info.name] = info
    try:
        tower = factory.convert(src, tmp_path / "tower.pt", to="reference", model=info.name)
    finally:
        del configs._REGISTRY[info.name]
    assert F.detect_format(io.read_state_dict(tower)) == "reference"
    assert torch.equal(factory.load(tower)(_pixels()), tiny_clip.encode_image(_pixels()))

    with pytest.raises(CheckpointError, match="open_clip layout is for CLIP"):
        factory.convert(timm_file, tmp_path / "x.safetensors", to="open_clip")
    with pytest.raises(CheckpointError, match="does not fit PE-Core-B16-224"):
        factory.convert(src, tmp_path / "y.pt", to="reference", model="PE-Core-B16-224")
    with pytest.raises(ValueError, match="unknown target format"):
        factory.convert(src, tmp_path / "z.pt", to="onnx")
    with pytest.raises(ValueError, match="needs a .safetensors destination"):
        factory.convert(src, tmp_path / "z.pt", to="safetensors")


def test_inspect_a_custom_clip_checkpoint(tmp_path, tiny_clip):
    path = factory.save(tiny_clip, tmp_path / "c.safetensors")
    info = factory.inspect_checkpoint(path)
    assert info["format"] == "native" and info["kind"] == "clip" and info["family"] == "custom"
    assert info["name"] is None and info["matches"] == [] and info["config_source"] == "json"
    assert (info["text_width"], info["text_depth"], info["context_length"]) == (32, 2, 16)
    assert info["vision_heads"] == 2 and info["output_dim"] == 16 and info["pool"] == "attn"
    assert info["parameters"] == sum(p.numel() for p in tiny_clip.parameters())
    assert info["dtype"] == "float32"


def test_half_precision_checkpoint_loads_as_float32_by_default(tmp_path):
    import perception_encoder as pe
    from perception_encoder.weights.files import read_state_dict

    model = randomize(CLIP(tiny_clip_config()))
    path = tmp_path / "half.safetensors"
    pe.save(model.half(), path)
    assert read_state_dict(path)["logit_scale"].dtype == torch.float16
    assert {p.dtype for p in pe.load(path).parameters()} == {torch.float32}
    assert {p.dtype for p in pe.load(path, dtype="fp16").parameters()} == {torch.float16}
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # saved files get the usual permissions

"""The vision tower against timm's PE towers (same weights), plus the feature API's contract."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import randomize, rel_err, released_config, tiny_vision_config
from peers import TIMM_NAMES, timm_vision
from perception_encoder.configs import list_models
from perception_encoder.layers import rope_2d_tables
from perception_encoder.vision import VisionTransformer

TOL = 1e-5
VISION_NAMES = [n for n in list_models() if n in TIMM_NAMES]


def _tower(name: str, depth: int = 2, seed: int = 0) -> VisionTransformer:
    """A released vision config cut to ``depth`` blocks, with random weights."""
    config = released_config(name, depth=depth)
    return randomize(VisionTransformer(getattr(config, "vision", config)), seed=seed)


def _timm_out(model, x):
    feats = model.forward_features(x)
    return model.forward_head(feats) if model.num_classes else feats


def test_every_released_name_is_covered():
    audio_visual = set(list_models("av")) | set(list_models("a-frame"))  # tests/test_av_parity.py
    assert set(VISION_NAMES) == set(list_models()) - set(list_models("bundled")) - audio_visual
    assert len(VISION_NAMES) == 14


@pytest.mark.parametrize("name", VISION_NAMES)
def test_matches_timm_at_native_resolution(name):
    ours = _tower(name)
    size = ours.config.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ours(x)
        b = _timm_out(timm_vision(name, ours), x)
    assert a.shape == b.shape
    if ours.config.pool_type == "attn":
        assert a.shape == (2, ours.config.output_dim)
    else:
        assert a.shape == (2, ours.config.grid_size**2 + ours.num_prefix_tokens, ours.config.width)
    assert rel_err(a, b) <= TOL


@pytest.mark.parametrize(
    "name,hw",
    [
        ("PE-Core-B16-224", (160, 288)),  # smaller, non-square
        ("PE-Core-B16-224", (320, 320)),  # larger, square
        ("PE-Core-L14-336", (154, 98)),  # portrait
        ("PE-Core-G14-448", (224, 336)),  # no CLS token
        ("PE-Spatial-B16-512", (256, 384)),
        ("PE-Lang-L14-448", (336, 448)),
        ("PE-Spatial-T16-512", (512, 768)),
    ],
)
def test_matches_reference_semantics_off_native_grid(name, hw):
    """Integer RoPE positions and a bilinear position-embedding resize (SPEC §2, §7b)."""
    ours = _tower(name, depth=2, seed=3)
    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = ours(x)
        b = _timm_out(timm_vision(name, ours, image_hw=hw), x)
    assert a.shape == b.shape
    assert rel_err(a, b) <= TOL


def test_rope_tables_layout():
    """First half of each head rotates by column, second half by row; CLS is not rotated."""
    head_dim, theta = 16, 10000.0
    cos, sin = rope_2d_tables(2, 3, head_dim, cls_token=True, theta=theta)
    assert cos.shape == (1 + 6, head_dim // 2)
    assert torch.all(cos[0] == 1) and torch.all(sin[0] == 0)
    freqs = 1.0 / theta ** (torch.arange(0, 8, 2).float() / 8)
    # token at row 1, column 2 (row-major index 5, +1 for CLS); positions are 1-based with a CLS token
    angles = torch.cat([3 * freqs, 2 * freqs])
    assert torch.allclose(cos[6], angles.cos()) and torch.allclose(sin[6], angles.sin())
    cos0, _ = rope_2d_tables(2, 3, head_dim, cls_token=False, theta=theta)
    assert cos0.shape == (6, 8) and torch.all(cos0[0] == 1)


def test_forward_features_layers_match_timm_intermediates():
    name = "PE-Core-L14-336"
    ours = _tower(name, depth=3)
    peer = timm_vision(name, ours)
    x = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        theirs = peer.forward_intermediates(
            x, indices=[0, 1, 2], norm=False, output_fmt="NCHW", intermediates_only=True
        )
        for k in (0, 1, 2):
            feats = ours.forward_features(x, layer=k)
            assert feats.shape == (1, 24 * 24 + 1, 1024)
            grid = feats[:, 1:].transpose(1, 2).reshape(1, 1024, 24, 24)
            assert rel_err(grid, theirs[k]) <= TOL
        assert torch.equal(ours.forward_features(x, layer=-1), ours.forward_features(x, layer=2))
        assert torch.equal(ours.forward_features(x, layer=-3), ours.forward_features(x, layer=0))


def test_forward_intermediates_is_one_pass(tiny_vision):
    calls = []
    for block in tiny_vision.transformer.resblocks:
        block.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        outs = tiny_vision.forward_intermediates(x, layers=[-1, 0])
    assert len(calls) == 2  # two blocks, each run once for both requested layers
    calls.clear()
    with torch.no_grad():
        assert torch.equal(outs[0], tiny_vision.forward_features(x, layer=-1))
        assert torch.equal(outs[1], tiny_vision.forward_features(x, layer=0))
        first_only = tiny_vision.forward_intermediates(x, layers=[0])
    assert len(calls) == 2 + 1 + 1  # layer -1: two blocks; layer 0: one; intermediates [0]: one
    assert torch.equal(first_only[0], outs[1])


def test_forward_intermediates_formats(tiny_vision):
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        tokens = tiny_vision.forward_intermediates(x, layers=[1])[0]
        no_cls = tiny_vision.forward_intermediates(x, layers=[1], drop_cls=True)[0]
        grid = tiny_vision.forward_intermediates(x, layers=[1], output_fmt="NCHW")[0]
        normed = tiny_vision.forward_intermediates(x, layers=[1], norm=True)[0]
        last_two = tiny_vision.forward_intermediates(x, layers=2)
    assert tokens.shape == (2, 1 + 4 * 6, 32)
    assert torch.equal(no_cls, tokens[:, 1:])
    assert grid.shape == (2, 32, 4, 6)
    # row-major tokens: token (row 1, col 2) is grid[:, :, 1, 2]
    assert torch.equal(grid[:, :, 1, 2], no_cls[:, 1 * 6 + 2])
    assert torch.allclose(normed, tiny_vision.ln_post(tokens))
    assert len(last_two) == 2 and torch.equal(last_two[1], tokens)
    with pytest.raises(ValueError, match="output_fmt"):
        tiny_vision.forward_intermediates(x, output_fmt="NHWC")


def test_truncate(tiny_vision):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats0 = tiny_vision.forward_features(x, layer=0)
        pooled0 = tiny_vision.forward_head(feats0)
        tiny_vision.truncate(0)
        assert tiny_vision.depth == 1 and tiny_vision.config.depth == 1
        assert torch.equal(tiny_vision(x), pooled0)


def test_bad_inputs(tiny_vision):
    with pytest.raises(ValueError, match="smaller than one 8x8 patch"):
        tiny_vision(torch.randn(1, 3, 4, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_vision(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_vision(torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny_vision([[0.0]])
    with pytest.raises(IndexError, match="layer 2 is out of range for 2 blocks"):
        tiny_vision.forward_features(torch.randn(1, 3, 32, 32), layer=2)
    with pytest.raises(IndexError, match="out of range"):
        tiny_vision.forward_intermediates(torch.randn(1, 3, 32, 32), layers=[-3])


def test_threads_at_different_resolutions_agree_with_one_thread(tiny_vision):
    """RoPE is stateless: concurrent passes at different grids cannot disturb each other."""
    sizes = [(32, 32), (40, 64), (64, 24), (48, 48)] * 4
    inputs = [
        torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(i)) for i, hw in enumerate(sizes)
    ]
    with torch.no_grad():
        expected = [tiny_vision.forward_features(x) for x in inputs]
    results: list = [None] * len(inputs)

    def work(i):
        with torch.no_grad():
            results[i] = tiny_vision.forward_features(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected, strict=True):
        assert torch.equal(got, want)


def test_custom_config_pool_types():
    x = torch.randn(2, 3, 32, 32)
    for pool, shape in [("cls", (2, 16)), ("avg", (2, 16)), ("none", (2, 17, 16))]:
        cfg = tiny_vision_config(pool_type=pool, width=16, heads=2, output_dim=16 if pool != "none" else None)
        model = randomize(VisionTransformer(cfg))
        with torch.no_grad():
            assert model(x).shape == shape
    with pytest.raises(ValueError, match="divisible by heads"):
        tiny_vision_config(width=30, heads=4)
    with pytest.raises(ValueError, match="pool_type 'cls' needs"):
        tiny_vision_config(pool_type="cls", use_cls_token=False)

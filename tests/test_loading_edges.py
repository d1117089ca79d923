"""Real files and real workflows the strict loader must accept (built from random weights in the reference
layout): a PE-Lang / PE-Spatial file that still carries PE-Core's head, a PE-Core file cut to a
PerceptionLM-style tower (fewer blocks, no head, a bigger image), and ``strict=False`` as the reference."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from conftest import randomize, released_config, tiny_vision_config
from perception_encoder import configs
from perception_encoder.cli.main import main
from perception_encoder.clip import CLIP
from perception_encoder.configs import ModelInfo
from perception_encoder.errors import CheckpointError
from perception_encoder.factory import load
from perception_encoder.vision import VisionTransformer
from perception_encoder.weights import formats


@pytest.fixture
def registered(monkeypatch):
    """A tiny token tower registered as a PE-Spatial-style model, and the PE-Core-style tower it came from."""
    core = tiny_vision_config()  # ln_post, attention pooling, projection
    spatial = dataclasses.replace(core, use_ln_post=False, pool_type="none", output_dim=None)
    info = ModelInfo("Test-Spatial", "spatial", spatial)
    monkeypatch.setitem(configs._REGISTRY, info.name, info)
    return info, core


def test_a_token_tower_file_with_the_core_head_loads_and_says_what_it_dropped(tmp_path, registered, caplog):
    info, core = registered
    full = randomize(VisionTransformer(core), seed=1)
    path = tmp_path / "spatial_with_head.pt"
    torch.save(formats.from_native(full.state_dict(), "reference"), path)
    with caplog.at_level(logging.INFO, logger="perception_encoder.weights"):
        tower = load(info.name, checkpoint=path)
    assert "dropped 14 key(s) of a head" in caplog.text
    assert all(part in caplog.text for part in ("ln_post", "attn_pool", "proj"))
    assert not hasattr(tower, "attn_pool") and tower.config.pool_type == "none"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tower(x), full.forward_features(x), rtol=0, atol=0)
    # anything else unexpected is still an error
    sd = formats.from_native(full.state_dict(), "reference")
    sd["stray.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"15 unexpected key.*under proj, ln_post, attn_pool, stray"):
        load(info.name, checkpoint=path)


@pytest.mark.parametrize("name, depth, layers", [("PE-Core-L14-336", 3, 2), ("PE-Core-G14-448", 2, 1)])
def test_a_core_file_cut_to_a_perception_lm_tower_equals_the_references(tmp_path, name, depth, layers):
    """PerceptionLM's first stage: a PE-Core CLIP file (position table interpolated to 448 by the reference's
    script) loaded with strict=False into a tower with fewer blocks and no head; here from one call."""
    config = released_config(name, depth=depth, text_depth=1)
    clip = randomize(CLIP(config), seed=2)
    path = tmp_path / f"{name}.pt"
    torch.save(formats.from_native(clip.state_dict(), "reference"), path)

    ours = load(name, checkpoint=path, vision_only=True, layers=layers, image_size=448)
    assert ours.depth == layers and ours.config.image_size == 448 and ours.config.pool_type == "none"

    # the reference's way: interpolate the table as apps/plm/interpolate_PE_pos_embed.py, strict=False load
    sd = {
        k[len("visual.") :]: v
        for k, v in torch.load(path, weights_only=True).items()
        if k.startswith("visual.")
    }
    prefix = int(config.vision.use_cls_token)
    pos = sd["positional_embedding"]
    grid = config.vision.grid_size
    patches = pos[prefix:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(32, 32), mode="bilinear", align_corners=False)
    sd["positional_embedding"] = torch.cat([pos[:prefix], patches.permute(0, 2, 3, 1).reshape(32 * 32, -1)])
    plm_config = dataclasses.replace(
        config.vision, image_size=448, depth=layers, use_ln_post=False, pool_type="none", output_dim=None
    )
    reference = VisionTransformer(plm_config).eval()
    missing, unexpected = reference.load_state_dict(sd, strict=False)
    assert not missing and {k.split(".")[0] for k in unexpected} >= {"attn_pool", "ln_post", "proj"}

    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        got = ours(x)
        torch.testing.assert_close(got, reference(x), rtol=0, atol=0)
        # and it is the truncated PE-Core tower run at 448 (its table resized on the fly, the same way)
        core = load(path, vision_only=True)  # config from the shapes: the cut tower
        torch.testing.assert_close(got, core.forward_features(x, layer=layers - 1), rtol=1e-6, atol=1e-6)


def test_layers_and_image_size_need_a_vision_tower(tmp_path):
    clip = randomize(CLIP(released_config("PE-Core-T16-384", depth=2, text_depth=1)))
    path = tmp_path / "t.pt"
    torch.save(formats.from_native(clip.state_dict(), "reference"), path)
    with pytest.raises(ValueError, match="vision_only=True"):
        load("PE-Core-T16-384", checkpoint=path, layers=1)
    with pytest.raises(ValueError, match="layers must be an integer from 1 to 12"):
        load("PE-Core-T16-384", checkpoint=path, vision_only=True, layers=13)
    # more blocks than the file holds: the keys the tower misses are named
    with pytest.raises(CheckpointError, match=r"missing key.*resblocks\.2\."):
        load("PE-Core-T16-384", checkpoint=path, vision_only=True, layers=3)


def test_strict_false_loads_what_fits_and_reports_the_rest(tmp_path, registered):
    info, core = registered
    full = randomize(VisionTransformer(core), seed=4)
    sd = formats.from_native(full.state_dict(), "reference")
    sd["stray.weight"] = torch.zeros(3)
    del sd["transformer.resblocks.1.mlp.c_fc.bias"]
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="unexpected key.*missing key|missing key.*unexpected key"):
        load(path)
    name = "Test-Core-Tower"
    configs.register(ModelInfo(name, "custom", core), overwrite=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = load(name, checkpoint=path, strict=False)
        message = " ".join(str(w.message) for w in caught)
        assert "1 unexpected key(s) ignored" in message and "stray.weight" in message
        assert "1 key(s) left at their initial values" in message and "resblocks.1.mlp.c_fc.bias" in message
        kept = model.state_dict()
        for k, v in full.state_dict().items():
            if k != "transformer.resblocks.1.mlp.c_fc.bias":
                assert torch.equal(kept[k], v), k
        assert not kept["transformer.resblocks.1.mlp.c_fc.bias"].is_meta
        # another shape is still an error, strict or not
        sd = formats.from_native(full.state_dict(), "reference")
        sd["proj"] = torch.zeros(4, 4)
        torch.save(sd, path)
        with pytest.raises(CheckpointError, match="another shape"):
            load(name, checkpoint=path, strict=False)

        # the command line: --no-strict, and the report on stderr
        torch.save(
            formats.from_native(full.state_dict(), "reference") | {"stray.weight": torch.zeros(3)}, path
        )
        image = tmp_path / "a.png"
        from PIL import Image

        Image.new("RGB", (40, 30), (90, 10, 200)).save(image)
        args = ["features", image, "-m", name, "-c", path, "-o", tmp_path / "f.npy"]
        strict = CliRunner().invoke(main, [str(a) for a in args])
        assert strict.exit_code == 1 and "stray.weight" in strict.output
        lenient = CliRunner().invoke(main, [str(a) for a in [*args, "--no-strict"]])
        assert lenient.exit_code == 0, lenient.output
        assert "unexpected key(s) ignored" in lenient.stderr
    finally:
        configs._REGISTRY.pop(name, None)


def test_an_out_of_range_layer_is_an_error_not_a_wrap(tiny_vision):
    """The reference wraps layer_idx modulo the depth (silently giving block 0 for layer == depth); ours
    refuses it, on purpose."""
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(IndexError, match="out of range"):
        tiny_vision.forward_features(x, layer=tiny_vision.depth)

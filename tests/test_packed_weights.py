"""Packed weights in the default ``mapped`` mode: weights memory-mapped from a checkpoint are packed once
and their file pages released, so one copy stays in memory; everything else is left unpacked."""

from __future__ import annotations

import mmap
import struct
import sys

import pytest
import torch

from conftest import randomize, rel_err, tiny_clip_config, token_ids
from perception_encoder.clip import CLIP
from perception_encoder.factory import load, save
from perception_encoder.layers import linear as linear_mod

pytestmark = [
    pytest.mark.skipif(
        not (linear_mod.onednn_linear_enabled() and linear_mod._supported().packing),
        reason="no packed oneDNN weights here",
    ),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise are Linux's"),
]


def _resident_pages(t: torch.Tensor) -> int:
    """How many pages of ``t`` are resident in this process (from /proc/self/pagemap)."""
    page = mmap.PAGESIZE
    first, last = t.data_ptr() // page, (t.data_ptr() + t.numel() * t.element_size() - 1) // page
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        entries = struct.unpack(f"<{last - first + 1}Q", f.read((last - first + 1) * 8))
    return sum(e >> 63 & 1 for e in entries)


@pytest.fixture
def mode():
    """Run with a clean cache, and restore the packing mode afterwards."""
    before = linear_mod.weight_packing_mode()
    linear_mod.clear_packed_weights()
    yield linear_mod.set_weight_packing
    linear_mod.set_weight_packing(before)
    linear_mod.clear_packed_weights()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=g), token_ids(2, 16, [7, 4])


@pytest.fixture
def saved(tmp_path):
    model = randomize(CLIP(tiny_clip_config()))
    path = tmp_path / "m.pt"
    save(model, path)
    return model, path


@pytest.fixture
def packed(mode, saved):
    """``(in-memory model, the same loaded from its file, its first-pass outputs)``: the loaded model has
    run once in ``mapped`` mode, so its weights are packed and their plain pages released."""
    model, path = saved
    mode("mapped")
    loaded = load(path)
    image, ids = _inputs()
    with torch.inference_mode():
        first = loaded.encode_image(image), loaded.encode_text(ids)
    return model, loaded, first


def test_mapped_is_the_default():
    assert linear_mod._pack_mode("auto") == "mapped"
    assert linear_mod.weight_packing_mode() in ("mapped", "off")  # "off" only if PE_PACK_WEIGHTS says so


def test_loaded_weights_are_packed_and_their_pages_released(mode, saved):
    model, path = saved
    mode("mapped")
    image, ids = _inputs()
    with torch.inference_mode():
        want = model.encode_image(image), model.encode_text(ids)
    assert linear_mod.packed_weight_bytes() == 0  # built in memory: left unpacked

    loaded = load(path)
    fc = loaded.visual.transformer.resblocks[0].mlp.c_fc.weight
    with torch.inference_mode():
        got = loaded.encode_image(image), loaded.encode_text(ids)
        entries = len(linear_mod._PACKED)
        again = loaded.encode_image(image), loaded.encode_text(ids)
    assert len(linear_mod._PACKED) == entries  # packed once: views (the patch embedding) hit the cache
    assert rel_err(got[0], want[0]) <= 1e-6 and rel_err(got[1], want[1]) <= 1e-6
    assert torch.equal(again[0], got[0]) and torch.equal(again[1], got[1])
    ends = ("in_proj_weight", "out_proj.weight", "c_fc.weight", "c_proj.weight")
    linears = [w for n, w in loaded.named_parameters() if n.endswith(ends)]
    assert linear_mod.packed_weight_bytes() >= 0.9 * sum(
        w.numel() * w.element_size() for w in linears if w.numel() * w.element_size() >= 2 * mmap.PAGESIZE
    )
    assert _resident_pages(fc) <= 2  # the plain copy left memory (the edge pages may be shared)
    # ... and still reads back the file's values
    assert torch.equal(fc, model.visual.transformer.resblocks[0].mlp.c_fc.weight)


def test_a_weight_modified_in_place_is_used_unpacked(mode, saved):
    model, path = saved
    mode("mapped")
    loaded = load(path)
    fc = loaded.visual.transformer.resblocks[0].mlp.c_fc.weight
    image, _ = _inputs()
    with torch.inference_mode():
        loaded.encode_image(image)
    before = linear_mod.packed_weight_bytes()
    with torch.no_grad():
        fc.mul_(-1)  # its pages become private copies, which must never be released
        model.visual.transformer.resblocks[0].mlp.c_fc.weight.mul_(-1)
    with torch.inference_mode():
        got, want = loaded.encode_image(image), model.encode_image(image)
    assert rel_err(got, want) <= 1e-6
    assert linear_mod.packed_weight_bytes() == before - fc.numel() * fc.element_size()
    assert torch.equal(fc, model.visual.transformer.resblocks[0].mlp.c_fc.weight)  # the change survived


def test_off_and_all(mode, saved):
    model, path = saved
    image, ids = _inputs()
    mode("off")
    loaded = load(path)
    with torch.inference_mode():
        plain = loaded.encode_image(image), loaded.encode_text(ids)
    assert linear_mod.packed_weight_bytes() == 0
    mode("all")
    with torch.inference_mode():
        packed_img, packed_txt = model.encode_image(image), model.encode_text(ids)
    assert linear_mod.packed_weight_bytes() > 0  # in-memory weights too
    assert rel_err(packed_img, plain[0]) <= 1e-6 and rel_err(packed_txt, plain[1]) <= 1e-6
    with pytest.raises(ValueError, match="unknown mode 'sometimes'"):
        mode("sometimes")


def test_training_reads_the_plain_weights(packed):
    """Gradients take the F.linear path, which reads the released pages back from the file."""
    model, loaded, _ = packed
    image, _ = _inputs()
    loaded.train()
    out = loaded.encode_image(image)
    ref = model.train().encode_image(image)
    assert rel_err(out, ref) <= 1e-6
    out.square().sum().backward()
    assert loaded.visual.transformer.resblocks[0].mlp.c_fc.weight.grad is not None


def test_saving_over_the_loaded_file_keeps_the_model(packed, saved):
    """``pe.save`` writes a new file and renames it: the mapping (and released pages) keep the old file."""
    model, loaded, want = packed
    image, ids = _inputs()
    save(randomize(CLIP(tiny_clip_config()), seed=5), saved[1])  # other weights, same path
    with torch.inference_mode():
        got = loaded.encode_image(image), loaded.encode_text(ids)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    fc = loaded.visual.transformer.resblocks[0].mlp.c_fc.weight
    assert torch.equal(fc, model.visual.transformer.resblocks[0].mlp.c_fc.weight)  # read back: old file

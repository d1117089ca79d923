"""Loading with a cast keeps one copy: the float32 file's pages are released tensor by tensor."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import perception_encoder as pe
from perception_encoder.configs import VisionConfig
from perception_encoder.pages import file_mappings, release_file_pages
from perception_encoder.weights.files import read_state_dict

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise are Linux's")

# About 50 M parameters: 190 MiB in float32, big enough that the import noise (a few MiB) is small beside it.
BIG = VisionConfig(image_size=32, patch_size=16, width=1024, depth=4, heads=16, mlp_dim=4096, output_dim=256)
TINY = VisionConfig(image_size=32, patch_size=16, width=64, depth=1, heads=2, mlp_dim=128, output_dim=16)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@linux_only
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_release_drops_the_pages_and_the_values_survive(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    pe.save(pe.create_model(BIG), path)
    state = read_state_dict(path)
    maps = file_mappings(path)
    assert maps, "the checkpoint should be memory-mapped"
    big = state["transformer.resblocks.0.mlp.c_fc.weight"]
    expected = big.double().sum().item()
    assert big.float().sum().item() != 0  # touch every page
    before = _rss_mib()
    released = release_file_pages(big, maps)
    assert released >= big.numel() * 4 - 2 * 4096  # all whole pages inside the tensor
    assert before - _rss_mib() > 0.8 * released / 2**20
    # clean file pages: touching them again reads the file, not zeros
    assert big.double().sum().item() == expected
    # a tensor that is not in a mapping of that file is left alone
    assert release_file_pages(torch.ones(10_000), maps) == 0
    assert release_file_pages(big, file_mappings(tmp_path / "elsewhere.pt")) == 0


PROBE = textwrap.dedent(
    """
    import json, sys, torch
    import perception_encoder as pe

    def status(field):
        with open("/proc/self/status") as f:
            return int(next(x for x in f if x.startswith(field + ":")).split()[1]) / 1024

    big, tiny, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
    pe.load(tiny, dtype=dtype)  # imports and allocator pools into the baseline
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current resident size
    model = pe.load(big, dtype=dtype)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    print(json.dumps({"peak": status("VmHWM") - base, "weights": weights}))
    """
)


@linux_only
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_bf16_load_of_a_float32_file_peaks_near_the_bf16_size(tmp_path, suffix):
    big, tiny = tmp_path / f"big{suffix}", tmp_path / f"tiny{suffix}"
    pe.save(pe.create_model(BIG), big)
    pe.save(pe.create_model(TINY), tiny)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(big), str(tiny), "bfloat16"],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # without the release the float32 pages stay resident: 3x the bf16 weights
    assert r["peak"] <= 1.15 * r["weights"], r


def test_bf16_load_equals_a_cast_of_the_float32_model(tmp_path):
    path = tmp_path / "m.pt"
    model = pe.create_model(TINY)
    pe.save(model, path)
    loaded = pe.load(path, dtype=torch.bfloat16)
    ref = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k

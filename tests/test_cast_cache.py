"""bfloat16 (and float16, where oneDNN runs it) by the natural route: ``pe.load(float32 file,
dtype=torch.bfloat16)`` goes through a cast written once to disk, so its weights are memory-mapped, packed and
held once, as a bfloat16 file's are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import perception_encoder as pe
from conftest import randomize, released_config, tiny_clip_config, token_ids
from perception_encoder.clip import CLIP
from perception_encoder.configs import VisionConfig
from perception_encoder.layers import linear as linear_mod
from perception_encoder.weights import cast_cache

pytestmark = [
    pytest.mark.skipif(not linear_mod.packs_mapped_weights(torch.bfloat16), reason="no packed bfloat16 here"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise are Linux's"),
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cast"
    monkeypatch.setenv(cast_cache.CACHE_ENV, str(folder))
    linear_mod.clear_packed_weights()
    yield folder
    linear_mod.clear_packed_weights()


def _inputs(size=32, context=16, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, size, size, generator=g).to(dtype), token_ids(2, context, [7, 4])


def _outputs(model, image, ids):
    with torch.inference_mode():
        return model.encode_image(image), model.encode_text(ids)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.bfloat16,
        pytest.param(
            torch.float16,
            marks=pytest.mark.skipif(
                not linear_mod.packs_mapped_weights(torch.float16), reason="no packed float16 on this CPU"
            ),
        ),
    ],
)
def test_the_natural_route_equals_the_unpacked_cast_and_is_packed(tmp_path, cache, dtype):
    path = pe.save(randomize(CLIP(tiny_clip_config())), tmp_path / "m.pt")
    image, ids = _inputs(dtype=dtype)
    with linear_mod.weight_packing("off"):  # the plain route: cast in memory, never packed
        os.environ[cast_cache.CACHE_ENV] = "off"
        plain = pe.load(path, dtype=dtype)
        want = _outputs(plain, image, ids)
        os.environ[cast_cache.CACHE_ENV] = str(cache)
    assert not cache.exists()

    model = pe.load(path, dtype=dtype)
    (entry,) = cache.glob("*.safetensors")
    got = _outputs(model, image, ids)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert linear_mod.packed_weight_bytes() > 0  # the cast weights were packed
    for name, t in model.state_dict().items():  # the weights are the exact cast, now read from the file
        assert torch.equal(t, plain.state_dict()[name]), name
        assert t.dtype == (dtype if t.is_floating_point() else t.dtype)

    mtime = entry.stat().st_mtime_ns
    pe.load(path, dtype=dtype)  # again: the same entry, not rewritten
    assert [p.name for p in cache.glob("*.safetensors")] == [entry.name] and entry.stat().st_mtime_ns == mtime
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))  # a changed source gets its own cast
    pe.load(path, dtype=dtype)
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert not list(cache.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["PE-Spatial-T16-512", "PE-Lang-L14-448"])
def test_every_family_and_float32_loads_leave_the_cache_alone(tmp_path, cache, name):
    tower_config = released_config(name, depth=1)  # (Core: the CLIP test above)
    path = pe.save(
        randomize(pe.VisionTransformer(dataclass_replace(tower_config, image_size=64))), tmp_path / "s.pt"
    )
    tower = pe.load(path, dtype="bf16")
    x = torch.randn(1, 3, 64, 64).bfloat16()
    with torch.inference_mode():
        tower(x)
    assert linear_mod.packed_weight_bytes() > 0 and len(list(cache.glob("*.safetensors"))) == 1
    pe.load(path)  # float32: no cast, no cache entry
    assert len(list(cache.glob("*.safetensors"))) == 1


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_a_cache_that_cannot_be_written_falls_back_to_the_cast_in_memory(tmp_path, monkeypatch):
    path = pe.save(randomize(CLIP(tiny_clip_config())), tmp_path / "m.pt")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(cast_cache.CACHE_ENV, str(blocker / "cast"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = pe.load(path, dtype=torch.bfloat16)
    assert any("casting in memory instead" in str(w.message) for w in caught)
    assert next(model.parameters()).dtype == torch.bfloat16


PROBE = textwrap.dedent(
    """
    import json, sys, torch
    import perception_encoder as pe

    def status(field):
        with open("/proc/self/status") as f:
            return int(next(x for x in f if x.startswith(field + ":")).split()[1]) / 1024

    big, tiny = sys.argv[1], sys.argv[2]
    x = torch.randn(2, 3, 32, 32).bfloat16()
    with torch.inference_mode():
        pe.load(tiny, dtype=torch.bfloat16)(x)  # imports, allocator pools and kernels into the baseline
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current resident size
    model = pe.load(big, dtype=torch.bfloat16)
    with torch.inference_mode():
        model(x)  # the first pass packs the weights
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    print(json.dumps({"peak": status("VmHWM") - base, "weights": weights, "now": status("VmRSS") - base}))
    """
)


@pytest.mark.parametrize("warm", [False, True], ids=["first load writes the cast", "later loads read it"])
def test_loading_and_the_first_pass_peak_near_the_bf16_weights(tmp_path, cache, warm):
    # ~250 MB of bf16 weights: the first pass's fixed costs (~13 MB: packing one weight beside its pages,
    # kernels' buffers) are a small part of it, as of any released model's
    big_config = VisionConfig(
        image_size=32, patch_size=16, width=1024, depth=8, heads=16, mlp_dim=4096, output_dim=256
    )
    tiny_config = VisionConfig(
        image_size=32, patch_size=16, width=64, depth=1, heads=2, mlp_dim=128, output_dim=16
    )
    big, tiny = tmp_path / "big.safetensors", tmp_path / "tiny.safetensors"
    pe.save(pe.create_model(big_config), big)
    pe.save(pe.create_model(tiny_config), tiny)
    env = {**os.environ, cast_cache.CACHE_ENV: str(cache)}
    runs = 2 if warm else 1
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, str(big), str(tiny)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["peak"] <= 1.1 * r["weights"], r  # one copy: the packed weights (the plain ones left memory)

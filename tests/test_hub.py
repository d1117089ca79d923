"""Released names and hf-hub: strings resolved through a LOCAL Hugging Face cache (never the network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import randomize, tiny_clip_config
from perception_encoder import configs
from perception_encoder.clip import CLIP
from perception_encoder.configs import ModelInfo, get_model_info
from perception_encoder.errors import CheckpointError
from perception_encoder.factory import load
from perception_encoder.vision import VisionTransformer
from perception_encoder.weights import files as io
from perception_encoder.weights import formats as F
from perception_encoder.weights import hub

REV = "0123456789abcdef0123456789abcdef01234567"


def _cache_file(cache: Path, repo_id: str, filename: str) -> Path:
    """Where huggingface_hub keeps ``filename`` of ``repo_id`` at revision ``main`` in cache folder ``cache``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    path = repo / "snapshots" / REV / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_released_name_loads_from_the_local_hub_cache(offline_cache):
    name = "PE-Spatial-T16-512"
    info = get_model_info(name)
    assert (info.hub_repo, info.hub_filename) == (f"facebook/{name}", f"{name}.pt")
    model = randomize(VisionTransformer(info.config), seed=3)
    torch.save(
        {"state_dict": model.state_dict()}, _cache_file(offline_cache, info.hub_repo, info.hub_filename)
    )
    loaded = load(name)
    assert isinstance(loaded, VisionTransformer) and not loaded.training
    _same(loaded, model)


def test_offline_without_cache_says_what_was_looked_for(offline_cache):
    with pytest.raises(CheckpointError) as err:
        load("PE-Core-B16-224")
    msg = str(err.value)
    assert "'PE-Core-B16-224.pt'" in msg and "'facebook/PE-Core-B16-224'" in msg
    assert str(offline_cache) in msg and "--checkpoint PATH" in msg and "HF_HUB_OFFLINE=0" in msg


def test_hub_strings_for_timm_and_open_clip_files(offline_cache, monkeypatch):
    info = ModelInfo("Test-Hub-Tiny", "custom", tiny_clip_config())
    monkeypatch.setitem(configs._REGISTRY, info.name, info)
    clip = randomize(CLIP(info.config), seed=4)

    # open_clip's layout, repo only: the usual file names are tried
    oc = _cache_file(offline_cache, "timm/PE-Tiny", "open_clip_model.safetensors")
    io.write_checkpoint(F.from_native(clip.state_dict(), "open_clip"), oc)
    _same(load(info.name, checkpoint="hf-hub:timm/PE-Tiny"), clip)

    # timm's layout, file named explicitly, into a vision tower
    tm = _cache_file(offline_cache, "timm/vit_pe_tiny.fb", "model.safetensors")
    io.write_checkpoint(F.from_native(clip.state_dict(), "timm"), tm)
    vision = load(info.name, checkpoint="hf-hub:timm/vit_pe_tiny.fb/model.safetensors", vision_only=True)
    _same(vision, clip.visual)

    with pytest.raises(CheckpointError, match="none of open_clip_model.safetensors, model.safetensors"):
        load(info.name, checkpoint="hf-hub:timm/not-cached")
    with pytest.raises(
        CheckpointError, match="'weights.pt' of hub repo 'timm/PE-Tiny' is not in the local cache"
    ):
        load(info.name, checkpoint="hf-hub:timm/PE-Tiny/weights.pt")


def test_hub_cache_honours_hf_home(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_cache_dir() == str(tmp_path / "home" / "hub")
    assert hub.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.hub_offline()


def test_parse_hub_spec():
    assert hub.parse_hub_spec("hf-hub:timm/PE-Core-B-16") == ("timm/PE-Core-B-16", None, None)
    assert hub.parse_hub_spec("hf-hub:org/repo/sub/file.pt") == ("org/repo", "sub/file.pt", None)
    assert hub.parse_hub_spec("hf-hub:org/repo@v1/model.safetensors") == (
        "org/repo",
        "model.safetensors",
        "v1",
    )
    with pytest.raises(CheckpointError, match="expected 'hf-hub:<org>/<repo>'"):
        hub.parse_hub_spec("hf-hub:justone")
    with pytest.raises(ValueError, match="not an hf-hub checkpoint string"):
        hub.parse_hub_spec("timm/x")


def test_model_without_released_weights_asks_for_a_checkpoint(monkeypatch):
    info = ModelInfo("Test-No-Weights", "custom", tiny_clip_config())
    monkeypatch.setitem(configs._REGISTRY, info.name, info)
    with pytest.raises(CheckpointError, match="no released weights.*checkpoint=PATH"):
        load(info.name)


def test_the_test_session_never_sees_the_developers_cache():
    """conftest points every Hugging Face cache at a fresh folder and turns the hub offline."""
    from conftest import HF_TEST_HOME

    assert os.environ["HF_HOME"] == HF_TEST_HOME
    assert hub.hub_cache_dir() == os.path.join(HF_TEST_HOME, "hub")
    assert hub.hub_offline()
    assert os.path.expanduser("~") not in HF_TEST_HOME

"""Loading PE-AV and PE-A-Frame checkpoints through ``pe.load``: the reference release's snapshot (hub
revision ``perception_models``, through a local hub cache), transformers' layout (a ``save_pretrained``
folder, or the hub's ``main``), this package's own files; tied weights, unused tensors, the tokenizer,
and errors that say what is wrong. Tiny configs with the real formats; nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "PeAudioVideoModel"):  # the parity reference: transformers >= 5 (tested 5.24)
    pytest.skip("this transformers has no PE-AV models", allow_module_level=True)
pytest.importorskip("timm")

from av_helpers import (  # noqa: E402
    register_tiny_frames,
    rel_err,
    tiny_config,
    waves,
    write_reference_folder,
    write_transformers_folder,
)
from perception_encoder.av.audio import HOP_LENGTH, pad_waveforms  # noqa: E402
from perception_encoder.av.model import PEAudioFrame, PEAudioVisual  # noqa: E402
from perception_encoder.errors import CheckpointError  # noqa: E402
from perception_encoder.factory import load, save  # noqa: E402

TOL = 1e-5
REV = "89abcdef0123456789abcdef0123456789abcdef"


def _to_hub_cache(cache: Path, repo: str, revision: str, folder: Path) -> None:
    """Put a snapshot's files where huggingface_hub looks for ``repo`` at ``revision`` (a branch name)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(REV)
    shutil.copytree(folder, root / "snapshots" / REV, dirs_exist_ok=True)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _inputs(frames: int = 3):
    wave, pad = pad_waveforms(waves([3 * HOP_LENGTH + 400, 2 * HOP_LENGTH], seed=1))
    pixels = torch.randn(2, frames, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1] * frames, [1] * (frames - 1) + [0]])
    return wave, pad, pixels, mask


def _check_av(model, tx, frames: int = 3) -> None:
    wave, pad, pixels, mask = _inputs(frames)
    ids, text_mask = model.tokenize(["a dog barking", "rain"])
    with torch.no_grad():
        ref = tx(
            input_ids=ids,
            pixel_values_videos=pixels,
            input_values=wave,
            attention_mask=text_mask,
            padding_mask_videos=mask,
            padding_mask=pad.long(),
        )
        assert rel_err(model.encode_audio(wave, pad), ref.audio_embeds) < TOL
        assert rel_err(model.encode_audio_video(wave, pixels, pad, mask), ref.audio_video_embeds) < TOL
        assert rel_err(model.encode_text(ids, text_mask, "video"), ref.text_video_embeds) < TOL
        assert (
            rel_err(model.encode_video_plus_text(ids, pixels, text_mask, mask), ref.video_plus_text_embeds)
            < TOL
        )


def _check_frame_model(model, tx) -> None:
    wave, pad, _, _ = _inputs()
    ids, text_mask = model.tokenize(["a dog barking", "people talking"])
    with torch.no_grad():
        ref = tx(input_ids=ids, input_values=wave, attention_mask=text_mask, padding_mask=pad.long())
        assert rel_err(model.frame_logits(ids, wave, text_mask, pad), ref.logits_audio_text) < TOL


def test_transformers_save_pretrained_folder(tmp_path):
    config = tiny_config("av")
    tx = write_transformers_folder(config, tmp_path / "tx", seed=1)
    files = {p.name for p in (tmp_path / "tx").iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    # tied weights are saved once: the audio and text towers' copies are not in the file
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tx" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any(
        k.startswith(("audio_video_encoder.embedder.audio_encoder.", "audio_model.text_model.")) for k in keys
    )
    model = load(str(tmp_path / "tx"))
    assert isinstance(model, PEAudioVisual) and not model.training
    assert model.config.frames.depth == 1 and model.config.output_dim == 32  # read from its config.json
    _check_av(model, tx)
    # the logit scales are the file's
    assert float(model.audio_text_logit.scale) == pytest.approx(4.0)


def test_reference_snapshot_of_a_released_name_from_the_hub_cache(tmp_path, offline_cache, monkeypatch):
    register_tiny_frames(monkeypatch)
    config = tiny_config("av", num_frames=16)
    tx = write_transformers_folder(config, tmp_path / "tx", seed=2)
    snapshot = write_reference_folder(config, tmp_path / "ref", tx, extra_text_layers=2)
    saved = json.loads((snapshot / "config.json").read_text())
    assert saved["nth_text_layer"] == 2 and saved["text_model"]["num_hidden_layers"] == 4
    _to_hub_cache(offline_cache, "facebook/pe-av-small-16-frame", "perception_models", snapshot)
    model = load("pe-av-small-16-frame")  # the reference's files, at the reference's revision
    assert isinstance(model, PEAudioVisual)
    assert model.config.num_frames == 16 and model.config.audio.hidden_size == 32  # the snapshot's config
    assert len(model.text.bert.layers) == 2  # layers past the one read are not kept
    # the reference model has no logit scales: dot products are the scores
    assert float(model.audio_text_logit.scale) == 1.0 and float(model.audio_text_logit.bias) == 0.0
    _check_av(model, tx, frames=16)


def test_reference_and_transformers_layouts_of_pe_a_frame(tmp_path, offline_cache):
    config = tiny_config("a-frame")
    tx = write_transformers_folder(config, tmp_path / "tx", seed=3)
    write_reference_folder(config, tmp_path / "ref", tx)
    _to_hub_cache(offline_cache, "facebook/pe-a-frame-base", "perception_models", tmp_path / "ref")
    _to_hub_cache(offline_cache, "facebook/pe-a-frame-base", "main", tmp_path / "tx")
    reference = load("pe-a-frame-base")
    from_main = load("hf-hub:facebook/pe-a-frame-base")  # transformers' layout on the hub's main
    from_folder = load(str(tmp_path / "tx"))
    for model in (reference, from_main, from_folder):
        assert isinstance(model, PEAudioFrame)
        _check_frame_model(model, tx)
    assert float(reference.logit_scale) == pytest.approx(4.0)  # PE-A-Frame's reference carries its own


def test_save_and_load_back_with_tokenizer(tmp_path):
    config = tiny_config("a-frame")
    tx = write_transformers_folder(config, tmp_path / "tx", seed=4)
    model = load(str(tmp_path / "tx"))
    out = save(model, tmp_path / "mine" / "frame.safetensors")
    assert (tmp_path / "mine" / "frame.json").is_file() and (tmp_path / "mine" / "tokenizer.json").is_file()
    again = load(out)
    sa, sb = model.state_dict(), again.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    _check_frame_model(again, tx)
    half = load(out, dtype="bf16")
    assert half.logit_scale.dtype == torch.bfloat16


def test_load_errors_say_what_is_wrong(tmp_path):
    config = tiny_config("a-frame")
    write_transformers_folder(config, tmp_path / "tx", seed=5)
    weights = tmp_path / "tx" / "model.safetensors"
    # a PE-A-Frame file given to a PE-AV name: the file's own config says PE-A-Frame, so keep it apart
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(weights, lone / "weights.safetensors")
    with pytest.raises(CheckpointError, match="no config.json beside these PE-AV weights"):
        load(str(lone / "weights.safetensors"))
    with pytest.raises(CheckpointError, match=r"does not fit pe-av-small.*missing key.*PE-A-Frame"):
        load("pe-av-small", checkpoint=str(lone / "weights.safetensors"))
    # a config that does not fit the weights
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "tx", bad)
    data = json.loads((bad / "config.json").read_text())
    data["audio_config"]["hidden_size"] = 64
    (bad / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="another shape"):
        load(str(bad))
    with pytest.raises(ValueError, match="not PE-AV models"):
        load(str(tmp_path / "tx"), vision_only=True)


def test_offline_without_cache_names_the_revision_and_file(offline_cache):
    with pytest.raises(CheckpointError) as err:
        load("pe-av-large")
    msg = str(err.value)
    assert "'model.safetensors'" in msg and "'facebook/pe-av-large'" in msg and "--checkpoint" in msg


def test_random_weights_and_tokenizer_missing(tmp_path):
    model = load(tiny_config("av"), pretrained=False)
    assert isinstance(model, PEAudioVisual) and model.tokenizer is None
    with pytest.raises(ValueError, match="no tokenizer"):
        model.tokenize(["a dog"])
    frames = dataclasses.replace(tiny_config("av"), num_frames=16)
    assert load(frames, pretrained=False).config.num_frames == 16

"""PE-AV and PE-A-Frame against transformers' implementation on the same random weights (fp32).

Every released config, at its real widths, cut to one layer per tower, two text layers and a one-block
frame tower at 28 px; batches of clips of different lengths and frame counts, padded. transformers is
configured to give the reference's values where it differs from it:

- its ModernBERT's ``tie_last_hidden_states=False``: ``hidden_states[-1]`` is then the last layer's output
  before the final norm, which the reference reads (transformers' own default has the norm applied);
- its embeddings are read from ``forward()``, which follows the reference's order ([audio or video, text]
  for the *_plus_text heads); its ``get_audio_plus_text_embeds`` / ``get_video_plus_text_embeds`` helpers
  concatenate [text, audio] (and pass a model output where a tensor is expected), and
  ``PeAudioModel.get_text_audio_embeds`` reads hidden states it did not ask for, so they are not used;
- its waveforms are padded by the reference's rule beforehand (its model does not pad; ours does);
- where the fusion's alignment differs (equal lengths but rows with fewer valid video frames), ours is
  checked against the reference's rule instead (``test_fusion_stretches_each_rows_frames_as_the_reference``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "PeAudioVideoModel"):  # the parity reference: transformers >= 5 (tested 5.24)
    pytest.skip("this transformers has no PE-AV models", allow_module_level=True)
pytest.importorskip("timm")

from av_helpers import (  # noqa: E402
    cut_config,
    load_tx_weights_into_ours,
    rel_err,
    tiny_config,
    transformers_model,
    waves,
)
from perception_encoder.av.audio import HOP_LENGTH, pad_waveforms  # noqa: E402
from perception_encoder.av.spans import frame_spans  # noqa: E402
from perception_encoder.configs import get_model_info, list_models  # noqa: E402

TOL = 1e-5
H = HOP_LENGTH
# audio lengths in samples (the first is the longest, not a multiple of the hop) and valid frames per clip
CASES = {
    "pe-av-small": ([3 * H + 777, 2 * H], [3, 2]),
    "pe-av-small-16-frame": ([2 * H + 1, H + 500], [16, 16]),
    "pe-av-base": ([4 * H - 300, H], [4, 1]),
    "pe-av-base-16-frame": ([3 * H, 3 * H], [16, 12]),
    "pe-av-large": ([2 * H + 1, H + 50], [2, 4]),
    "pe-av-large-16-frame": ([5 * H + 10, 2 * H], [16, 16]),
    "pe-a-frame-small": [4 * H + 123, 2 * H],
    "pe-a-frame-base": [6 * H, 3 * H - 1000],
    "pe-a-frame-large": [3 * H + 1, 3 * H + 1],
}

_BUILT: dict[str, tuple] = {}


def _pair(name: str):
    """Our model and transformers' on the same weights; the -16-frame twins share their base's (one pair
    is kept at a time, for memory)."""
    base = name.removesuffix("-16-frame")
    if base not in _BUILT:
        _BUILT.clear()
        config = cut_config(base)
        tx = transformers_model(config, seed=len(base))
        _BUILT[base] = (config, tx, load_tx_weights_into_ours(tx, config))
    config, tx, ours = _BUILT[base]
    return dataclasses.replace(config, num_frames=get_model_info(name).config.num_frames), tx, ours


def _text(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50000, (batch, 9), generator=g)
    mask = torch.ones(batch, 9, dtype=torch.long)
    mask[1:, 6:] = 0  # later rows are shorter texts
    return ids, mask


def test_every_released_name_is_covered():
    assert set(CASES) == set(list_models("av")) | set(list_models("a-frame"))
    assert len(CASES) == 9


@pytest.mark.parametrize("name", list_models("av"))
def test_pe_av_matches_transformers(name):
    config, tx, ours = _pair(name)
    lengths, valid_frames = CASES[name]
    assert (config.num_frames is None) or max(valid_frames) == config.num_frames
    raw = waves(lengths, seed=len(name))
    wave, pad = pad_waveforms(raw)
    n = max(valid_frames)
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(2, n, 3, 28, 28, generator=g)
    frame_mask = (torch.arange(n)[None] < torch.tensor(valid_frames)[:, None]).long()
    ids, text_mask = _text(2, seed=len(name))
    with torch.no_grad():
        ref = tx(
            input_ids=ids,
            pixel_values_videos=frames,
            input_values=wave,
            attention_mask=text_mask,
            padding_mask_videos=frame_mask,
            padding_mask=pad.long(),
        )
        audio = ours.encode_audio(wave, pad)
        video = ours.encode_video(frames, frame_mask)
        audio_video = ours.encode_audio_video(wave, frames, pad, frame_mask)
        texts = {t: ours.encode_text(ids, text_mask, t) for t in ("audio", "video", "audio_video")}
        audio_plus_text = ours.encode_audio_plus_text(ids, wave, text_mask, pad)
        video_plus_text = ours.encode_video_plus_text(ids, frames, text_mask, frame_mask)
        # the model pads an odd-length clip by reflection itself, as the reference does
        alone = ours.encode_audio(raw[0][None])
    pairs = {
        "audio": (audio, ref.audio_embeds),
        "video": (video, ref.video_embeds),
        "audio_video": (audio_video, ref.audio_video_embeds),
        "text_audio": (texts["audio"], ref.text_audio_embeds),
        "text_video": (texts["video"], ref.text_video_embeds),
        "text_audio_video": (texts["audio_video"], ref.text_audio_video_embeds),
        "audio_plus_text": (audio_plus_text, ref.audio_plus_text_embeds),
        "video_plus_text": (video_plus_text, ref.video_plus_text_embeds),
        "audio alone": (alone, ref.audio_embeds[:1]),
        "logits audio-text": (ours.logits("audio_text", audio, texts["audio"]), ref.logits_audio_text),
        "logits video-text": (ours.logits("video_text", video, texts["video"]), ref.logits_video_text),
        "logits audio-video": (ours.logits("audio_video", audio, video), ref.logits_audio_video),
        "logits av-text": (
            ours.logits("audio_video_text", audio_video, texts["audio_video"]),
            ref.logits_audio_video_text,
        ),
        "logits audio+text-video": (
            ours.logits("audio_plus_text", audio_plus_text, video),
            ref.logits_audio_plus_text_video,
        ),
        "logits video+text-audio": (
            ours.logits("video_plus_text", video_plus_text, audio),
            ref.logits_video_plus_text_audio,
        ),
    }
    errors = {k: rel_err(a, b) for k, (a, b) in pairs.items()}
    assert max(errors.values()) < TOL, errors
    assert audio.shape == (2, config.output_dim)


def _reference_spans(probs: torch.Tensor, threshold: float, hop: int = H, rate: int = 48000) -> list:
    """The reference's span rule (PEAudioFrame.forward): frames above the threshold, runs found from the
    changes of the False-padded predictions, frame index x hop / rate seconds."""
    preds = probs > threshold
    changes = torch.diff(torch.nn.functional.pad(preds, (1, 1), value=False).int()).nonzero()[:, 0]
    return [
        (int(s) * hop / rate, int(e) * hop / rate) for s, e in zip(changes[::2], changes[1::2], strict=True)
    ]


@pytest.mark.parametrize("name", list_models("a-frame"))
def test_pe_a_frame_matches_transformers(name):
    config = cut_config(name)
    tx = transformers_model(config, seed=3)
    ours = load_tx_weights_into_ours(tx, config)
    wave, pad = pad_waveforms(waves(CASES[name], seed=len(name)))
    ids, text_mask = _text(2, seed=5)
    with torch.no_grad():
        ref = tx(input_ids=ids, input_values=wave, attention_mask=text_mask, padding_mask=pad.long())
        frames = ours.encode_audio_frames(wave, pad)
        texts = ours.encode_text(ids, text_mask)
        logits = ours.frame_logits(ids, wave, text_mask, pad)
    assert rel_err(frames, ref.audio_embeds) < TOL
    assert rel_err(texts, ref.text_audio_embeds) < TOL
    assert rel_err(logits, ref.logits_audio_text) < TOL
    assert logits.shape == (2, 2, wave.shape[-1] // H)  # (audio, texts, frames)
    # spans: the reference's rule on transformers' probabilities, ours from our logits (a small logit
    # scale keeps random-weight probabilities off 0 and 1, and the median threshold makes spans)
    with torch.no_grad():
        for scale in (ours.logit_scale, tx.text_audio_logit_scale):
            scale.fill_(1e-2)
        ref = tx(input_ids=ids, input_values=wave, attention_mask=text_mask, padding_mask=pad.long())
        probs = ours.frame_logits(ids, wave, text_mask, pad).sigmoid()
    threshold = float(probs[0, 0].median())
    ours_spans = [t for s in frame_spans(probs[0, 0], ours.frame_seconds, threshold) for t in s[:2]]
    expected = [t for s in _reference_spans(ref.logits_audio_text[0, 0].sigmoid(), threshold) for t in s]
    assert ours_spans and ours_spans == pytest.approx(expected)


def test_fusion_stretches_each_rows_frames_as_the_reference():
    """Clips of equal audio length where one has fewer valid frames than the frame axis: the reference
    stretches each row's valid frames over its audio (AlignModalities); transformers keeps the frame
    axis as it is whenever it already has the audio's length (a documented deviation of transformers)."""
    config = tiny_config("av")
    tx = transformers_model(config, seed=11)
    ours = load_tx_weights_into_ours(tx, config)
    wave = torch.stack(waves([3 * H, 3 * H], seed=2))[:, None]
    frames = torch.randn(2, 3, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    frames[1, 2] *= 10  # the padded frame: transformers lets it through
    frame_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        batch = ours.encode_audio_video(wave, frames, None, frame_mask)
        row1_alone = ours.encode_audio_video(wave[1:], frames[1:, :2])  # 2 frames stretched over 3
        tx_batch = tx.get_audio_video_embeds(wave, frames, padding_mask_videos=frame_mask).audio_video_embeds
    assert rel_err(batch[1], row1_alone[0]) < TOL
    assert rel_err(batch[0], tx_batch[0]) < TOL
    assert rel_err(tx_batch[1], row1_alone[0]) > 1e-4


def test_text_embedding_is_the_last_layer_before_the_final_norm():
    config = tiny_config("a-frame")
    tx = transformers_model(config, seed=4)
    ours = load_tx_weights_into_ours(tx, config)
    ids, mask = torch.randint(5, 20, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        out = tx.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        ours_cls = ours.text(ids, mask)
    assert rel_err(ours_cls, out.hidden_states[-1][:, 0]) < TOL  # configured as the reference reads it
    assert rel_err(ours_cls, out.last_hidden_state[:, 0]) > 1e-2  # transformers' default: after the norm

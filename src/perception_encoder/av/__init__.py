"""PE-AV and PE-A-Frame: the audio-visual Perception Encoders.

    import perception_encoder as pe
    model = pe.load("pe-av-large")                      # reference weights (hub revision perception_models)
    ids, mask = model.tokenize(["a dog barking"])
    audio = pe.load_audio("bark.wav")                    # (L,) float32, mono, 48 kHz
    wave, pad = pe.pad_waveforms([audio])                # (1, 1, L') and (1, L')
    emb = model.encode_audio(wave, pad)                  # (1, 1024)
    txt = model.encode_text(ids, mask, target="audio")   # (1, 1024)

Modules, one concept each (arrows point down): ``configs`` (data), ``config_files`` (the reference's and
transformers' ``config.json``), ``audio`` (files -> 48 kHz mono
waveforms -> padded batches), ``frames`` (video files -> frames for the video tower), ``dac`` (the codec
encoder), ``patcher`` (masked-GroupNorm ResNet patcher), ``tower`` (the shared transformer block and
stack), ``text`` (ModernBERT from transformers, the optional extra ``av``), ``heads``, ``encoders`` (audio,
video and fusion encoders), ``model`` (``PEAudioVisual``, ``PEAudioFrame``), ``spans`` (per-frame scores ->
time spans), ``weights`` (the reference and transformers layouts), ``loading`` (``pe.load``'s AV branch).
Only ``text`` imports transformers, and only when a model is built.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "AVConfig": "configs",
    "TowerConfig": "configs",
    "DacConfig": "configs",
    "AVTextConfig": "configs",
    "PEAudioVisual": "model",
    "PEAudioFrame": "model",
    "AUDIO_EXTENSIONS": "audio",
    "SAMPLE_RATE": "audio",
    "is_audio_file": "audio",
    "load_audio": "audio",
    "pad_waveforms": "audio",
    "load_frames": "frames",
    "frames_to_tensor": "frames",
    "frame_spans": "spans",
    "Span": "spans",
    "load_av": "loading",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

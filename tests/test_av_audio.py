"""Audio in for PE-AV, on generated files: formats, rates, channels, video sound tracks, bad files; the
reference's batching (reflect padding to the hop, masks) and its video frame preprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from perception_encoder.av.audio import (  # noqa: E402
    HOP_LENGTH,
    SAMPLE_RATE,
    is_audio_file,
    load_audio,
    num_frames,
    pad_waveforms,
)
from perception_encoder.av.frames import frame_indices, frames_to_tensor, load_frames  # noqa: E402
from perception_encoder.errors import AudioLoadError, VideoLoadError  # noqa: E402


def _samples(data: np.ndarray, fmt: str) -> np.ndarray:
    """float (channels, n) in [-1, 1] -> the array PyAV wants for sample format ``fmt``."""
    planar = fmt.endswith("p")
    kind = fmt.rstrip("p")
    if kind == "s16":
        data = (np.clip(data, -1, 1) * 32767).astype(np.int16)
    elif kind == "s32":
        data = (np.clip(data, -1, 1) * 2147483647).astype(np.int32)
    else:
        data = data.astype(np.float32)
    return data if planar else np.ascontiguousarray(data.T).reshape(1, -1)


def write_audio(path: Path, data: np.ndarray, rate: int, codec: str | None = None) -> Path:
    """Encode float samples ``(channels, n)`` at ``rate`` Hz into ``path`` (container from its extension)."""
    codec = (
        codec or {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".ogg": "libopus"}[path.suffix]
    )
    layout = "mono" if data.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as c:
        stream = c.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.format.name
        size = stream.codec_context.frame_size or data.shape[1]
        for start in range(0, data.shape[1], size):
            frame = av.AudioFrame.from_ndarray(
                _samples(data[:, start : start + size], fmt), format=fmt, layout=layout
            )
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return path


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def peak_hz(wave: torch.Tensor, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.argmax(spectrum) * rate / len(wave))


def write_video(
    path: Path, frames: int = 10, size: int = 32, sound: np.ndarray | None = None, rate: int = 44100
):
    """An mp4 of ``frames`` coloured frames at 10 fps, with an AAC sound track when ``sound`` is given."""
    with av.open(str(path), "w") as c:
        video = c.add_stream("mpeg4", rate=10)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = c.add_stream("aac", rate=rate, layout="mono") if sound is not None else None
        for i in range(frames):
            img = np.full((size, size, 3), (i * 25) % 256, dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in video.encode(None):
            c.mux(packet)
        if audio is not None:
            fmt, size_a = audio.codec_context.format.name, audio.codec_context.frame_size
            for start in range(0, sound.shape[0], size_a):
                frame = av.AudioFrame.from_ndarray(
                    _samples(sound[None, start : start + size_a], fmt), format=fmt, layout="mono"
                )
                frame.sample_rate, frame.pts = rate, start
                for packet in audio.encode(frame):
                    c.mux(packet)
            for packet in audio.encode(None):
                c.mux(packet)
    return path


@pytest.mark.parametrize(
    "name, rate, freq",
    [
        ("tone.wav", 8000, 440.0),
        ("tone.flac", 44100, 1000.0),
        ("tone.mp3", 44100, 1000.0),
        ("tone.ogg", 48000, 700.0),
    ],
)
def test_formats_and_rates_decode_to_48khz_mono(tmp_path, name, rate, freq):
    path = write_audio(tmp_path / name, tone(freq, 1.0, rate)[None], rate)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    # resampled to 48 kHz: about one second of samples (lossy codecs add a few frames of delay)
    assert abs(wave.numel() - SAMPLE_RATE) < 0.06 * SAMPLE_RATE
    assert abs(peak_hz(wave) - freq) < 5  # the same tone, heard at the right pitch
    assert 0.3 < float(wave.abs().max()) < 0.7
    assert is_audio_file(path)


def test_8khz_and_44khz_sources_keep_their_duration(tmp_path):
    for rate in (8000, 44100):
        wave = load_audio(write_audio(tmp_path / f"t{rate}.wav", tone(300, 0.75, rate)[None], rate))
        assert wave.numel() == int(0.75 * SAMPLE_RATE)


def test_silence_and_stereo(tmp_path):
    silence = load_audio(write_audio(tmp_path / "silence.wav", np.zeros((1, 4800)), 48000))
    assert silence.numel() == 4800 and float(silence.abs().max()) == 0.0
    x = tone(500, 0.5, 48000)
    same = load_audio(write_audio(tmp_path / "same.wav", np.stack([x, x]), 48000))
    opposite = load_audio(write_audio(tmp_path / "opposite.wav", np.stack([x, -x]), 48000))
    left = load_audio(write_audio(tmp_path / "left.wav", np.stack([x, np.zeros_like(x)]), 48000))
    # FFmpeg's downmix: mono is proportional to left + right
    assert float(opposite.abs().max()) < 1e-3
    assert torch.allclose(same, 2 * left, atol=2e-4)
    assert np.corrcoef(same.numpy(), x)[0, 1] > 0.999


def test_the_sound_track_of_a_video_and_a_video_without_one(tmp_path):
    sound = tone(880, 1.0, 44100)
    with_sound = write_video(tmp_path / "talk.mp4", sound=sound)
    wave = load_audio(with_sound)
    assert abs(wave.numel() - SAMPLE_RATE) < 0.06 * SAMPLE_RATE and abs(peak_hz(wave) - 880) < 5
    frames = load_frames(with_sound, image_size=28)
    assert frames.shape == (10, 3, 28, 28)  # an all-frames model: every frame
    assert load_frames(with_sound, image_size=28, num_frames=16).shape == (16, 3, 28, 28)

    silent = write_video(tmp_path / "silent.mp4")
    with pytest.raises(AudioLoadError, match=r"silent\.mp4.*has no audio stream"):
        load_audio(silent)


def test_bad_files_are_named(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(os.urandom(3000))
    with pytest.raises(AudioLoadError, match="corrupt.wav"):
        load_audio(corrupt)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    with pytest.raises(AudioLoadError, match=r"empty\.flac.*empty"):
        load_audio(empty)
    with pytest.raises(AudioLoadError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioLoadError, match="a folder"):
        load_audio(tmp_path)
    long = write_audio(tmp_path / "long.wav", np.zeros((1, 48000 * 3)), 48000)
    with pytest.raises(AudioLoadError, match="longer than 2 s"):
        load_audio(long, max_seconds=2)
    with pytest.raises(VideoLoadError, match="corrupt.wav"):
        load_frames(corrupt, 28)


def test_batches_follow_the_reference_processor():
    a, b, c = torch.randn(5000), torch.randn(HOP_LENGTH * 2), torch.randn(700)
    batch, mask = pad_waveforms([a, b, c])
    assert batch.shape == (3, 1, 3 * HOP_LENGTH) and mask.shape == (3, 3 * HOP_LENGTH)
    # each reflect-padded to a multiple of the hop (the mask covers it), then zero-padded to the longest
    expected_a = torch.nn.functional.pad(a[None], (0, 3 * HOP_LENGTH - 5000), mode="reflect")[0]
    assert torch.equal(batch[0, 0], expected_a) and bool(mask[0].all())
    assert torch.equal(batch[1, 0, : 2 * HOP_LENGTH], b) and int(mask[1].sum()) == 2 * HOP_LENGTH
    assert float(batch[1, 0, 2 * HOP_LENGTH :].abs().sum()) == 0
    # 700 samples is shorter than the 1220 to pad: reflected again and again (the reference would fail)
    assert int(mask[2].sum()) == HOP_LENGTH and torch.equal(batch[2, 0, :700], c)
    assert torch.equal(batch[2, 0, 700:1399], c.flip(0)[1:])
    assert num_frames(5000) == 3 and num_frames(3840) == 2


def test_frames_are_preprocessed_as_the_reference_does():
    tv = pytest.importorskip("torchvision.transforms")
    frames = torch.randint(0, 256, (4, 90, 120, 3), dtype=torch.uint8)
    reference = tv.Compose(
        [
            tv.Resize((56, 56), interpolation=tv.InterpolationMode.BILINEAR),
            tv.Lambda(lambda x: x.float() / 255.0),
            tv.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ]
    )
    assert torch.equal(frames_to_tensor(frames, 56), reference(frames.permute(0, 3, 1, 2)))
    # 16 frames at int(i * (T - 1) / 15), repeated for short videos as the reference's rule does
    assert frame_indices(100, 16) == [int(i * 99 / 15) for i in range(16)]
    assert frame_indices(5, 16) == [int(i * 4 / 15) for i in range(16)]
    assert frame_indices(30, None) == list(range(30))
    assert len(frame_indices(1000, None)) == 256

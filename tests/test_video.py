"""Video files: frame sampling, decoding modes, bad files, long-video chunks, embeddings, datasets."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

av = pytest.importorskip("av")

from conftest import randomize, tiny_clip_config, tiny_vision_config  # noqa: E402
from perception_encoder import video as V  # noqa: E402
from perception_encoder.embedding import embed_video_file  # noqa: E402
from perception_encoder.errors import VideoLoadError  # noqa: E402

RATE = 10
STEP = 8  # frame i has its left half at grey level i * STEP, so a decoded frame tells its index


def write_video(path, n=30, rate=RATE, w=64, h=48):
    """A small video: left half grey level i*STEP (frame id), a red square moving right."""
    container = av.open(str(path), "w")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": "0"}  # lossless enough to read the frame id back exactly
    else:
        stream.bit_rate = 8_000_000
    for i in range(n):
        a = np.zeros((h, w, 3), np.uint8)
        a[:, : w // 2] = i * STEP
        x = (2 * i) % (w - 16)
        a[10:26, x : x + 16, 0] = 255
        for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


def frame_ids(frames: torch.Tensor) -> list[int]:
    """Recover frame indices from decoded frames (N, H, W, 3)."""
    return [round(v / STEP) for v in frames[:, 5, 5, 1].float().tolist()]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_video(d / "clip.mp4"),  # frame count in the header
        "mkv": write_video(d / "clip.mkv"),  # no frame count in the header: counting pass
    }


def _tf(img):
    """A picklable stand-in image transform: PIL -> (3, 32, 32) in [-1, 1]."""
    a = np.asarray(img.convert("RGB").resize((32, 32)), dtype=np.float32)
    return torch.from_numpy(a).permute(2, 0, 1) / 127.5 - 1


# --- sampling ----------------------------------------------------------------------------------------


def test_sample_frame_indices_reference_rule():
    assert V.sample_frame_indices(30, 8) == [0, 4, 8, 12, 16, 20, 24, 29]
    assert V.sample_frame_indices(100, 2) == [0, 99]
    assert V.sample_frame_indices(9, 1) == [4]
    assert V.sample_frame_indices(10, 1) == [5]  # T // 2, as the reference's evaluation
    assert V.sample_frame_indices(2, 1) == [1] and V.sample_frame_indices(1, 1) == [0]
    # fewer frames than asked: each frame once, never invented by repeating another
    assert V.sample_frame_indices(3, 8) == [0, 1, 2]
    assert V.sample_frame_indices(1, 4) == [0]
    assert V.sample_frame_indices(20, 1_000_000) == list(range(20))
    # training asks for the reference rule's repeats (clips of one size)
    assert V.sample_frame_indices(3, 8, repeat=True) == [0, 0, 0, 0, 1, 1, 1, 2]
    assert V.sample_frame_indices(1, 4, repeat=True) == [0, 0, 0, 0]
    for bad in [(0, 8), (10, 0), (-1, 2), (True, 2)]:
        with pytest.raises(ValueError):
            V.sample_frame_indices(*bad)


def test_frames_are_bounded_and_never_invented(videos):
    # 30-frame clip, 1,000,000 frames asked: refused with the bound; 200 asked: the 30 frames, once each
    with pytest.raises(ValueError, match=f"from 1 to {V.MAX_FRAMES}"):
        V.load_video(videos["mp4"], 1_000_000)
    assert frame_ids(V.load_video(videos["mp4"], 200)) == list(range(30))
    assert frame_ids(V.load_video(videos["mp4"], 40, repeat=True))[:3] == [0, 0, 1]
    with pytest.raises(ValueError, match="max_frames"):
        V.load_video(videos["mp4"], fps=1.0, max_frames=10**6)


def test_every_frame_mode_refuses_more_than_the_bound(videos, monkeypatch):
    monkeypatch.setattr(V, "MAX_FRAMES", 12)
    with pytest.raises(VideoLoadError, match="more than 12 frames.*iter_video_chunks"):
        V.load_video(videos["mp4"], None)
    assert len(V.load_video(videos["mp4"], None, max_frames=12)) == 12


def test_a_fifo_or_a_device_is_not_opened_as_a_video(tmp_path):
    import os

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # PyAV would block on it forever
    zero = tmp_path / "zero.mp4"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        with pytest.raises(VideoLoadError, match="not a regular file"):
            V.load_video(path, 4)


def test_is_video_file():
    assert V.is_video_file("a/b.MP4") and V.is_video_file("x.webm") and V.is_video_file("x.mkv")
    assert not V.is_video_file("x.jpg") and not V.is_video_file("noext")


# --- decoding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_load_video_uniform(videos, kind):
    frames = V.load_video(videos[kind], 8)
    assert frames.dtype == torch.uint8 and frames.shape == (8, 48, 64, 3)
    assert frame_ids(frames) == [0, 4, 8, 12, 16, 20, 24, 29]
    assert frames[:, 15, :, 0].max() > 200  # the red square is there
    assert frame_ids(V.load_video(videos[kind], 3)) == [0, 14, 29]
    assert frame_ids(V.load_video(videos[kind], 8, max_frames=2)) == [0, 29]


def test_load_video_all_frames_and_fps(videos):
    assert frame_ids(V.load_video(videos["mp4"], None)) == list(range(30))
    # 3 frames per second of a 10 fps video: frames shown at 0, 1/3, 2/3, 1, ... s
    assert frame_ids(V.load_video(videos["mp4"], fps=3.0)) == [0, 4, 7, 10, 14, 17, 20, 24, 27]
    assert frame_ids(V.load_video(videos["mkv"], fps=1.0)) == [0, 10, 20]
    # above the video's own rate: every frame once
    assert frame_ids(V.load_video(videos["mp4"], fps=50.0)) == list(range(30))
    assert frame_ids(V.load_video(videos["mp4"], fps=3.0, max_frames=4)) == [0, 4, 7, 10]
    with pytest.raises(ValueError, match="fps"):
        V.load_video(videos["mp4"], fps=0)


def test_header_overcount_is_resampled(videos, monkeypatch):
    # a header claiming 40 frames for a 30-frame file: sample again over the frames that decode
    monkeypatch.setattr(V._Opened, "metadata_frames", property(lambda self: 40))
    assert frame_ids(V.load_video(videos["mp4"], 8)) == [0, 4, 8, 12, 16, 20, 24, 29]


def test_iter_frames_streams_every_frame(videos):
    it = V.iter_frames(videos["mkv"])
    first = next(it)
    assert first.shape == (48, 64, 3) and first.dtype == torch.uint8
    assert 1 + sum(1 for _ in it) == 30


def test_bad_files_raise_video_load_error(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    image = tmp_path / "still.mp4"
    Image.new("RGB", (8, 8)).save(image, format="PNG")  # an image with a video name: no video stream

    zero = {}
    for ext in ("mp4", "mkv"):  # containers with a video stream declared but no frames
        p = tmp_path / f"zero.{ext}"
        c = av.open(str(p), "w")
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
        for pk in s.encode(None):
            c.mux(pk)
        c.close()
        zero[ext] = p

    cases = [tmp_path / "missing.mp4", empty, text, zero["mp4"], zero["mkv"], tmp_path]
    for path in cases:
        for call in (
            lambda p: V.load_video(p, 4),
            lambda p: V.load_video(p, fps=1.0),
            lambda p: list(V.iter_video_chunks(p, 1.0)),
            lambda p: next(V.iter_frames(p)),
        ):
            with pytest.raises(VideoLoadError) as err:
                call(path)
            assert path.name in str(err.value)
    with pytest.raises(VideoLoadError, match="empty"):
        V.load_video(empty)
    with pytest.raises(VideoLoadError, match="not found"):
        V.load_video(tmp_path / "missing.mp4")
    with pytest.raises(VideoLoadError, match="still image"):  # ffmpeg would read it as a 1-frame video
        V.load_video(image, 4)


def test_list_frame_files(tmp_path):
    for name in ["00002.png", "00000.png", "00001.jpg"]:
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in V.list_frame_files(tmp_path)] == ["00000.png", "00001.jpg", "00002.png"]
    (tmp_path / "sub").mkdir()
    with pytest.raises(VideoLoadError, match="no frame images"):
        V.list_frame_files(tmp_path / "sub")
    with pytest.raises(VideoLoadError, match="not a folder"):
        V.list_frame_files(tmp_path / "notes.txt")


# --- chunks of long videos -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mp4", "mkv"])
def test_iter_video_chunks(videos, kind):
    segs = list(V.iter_video_chunks(videos[kind], chunk_seconds=1.0, frames_per_chunk=4))
    assert [(s.start, s.end) for s in segs] == [(0.0, 1.0), (1.0, 2.0), (2.0, pytest.approx(3.0))]
    assert [frame_ids(s.frames) for s in segs] == [[0, 3, 6, 9], [10, 13, 16, 19], [20, 23, 26, 29]]
    assert segs[1].frame_times == pytest.approx([1.0, 1.3, 1.6, 1.9])
    # a last, short span gives its distinct frames only
    segs = list(V.iter_video_chunks(videos[kind], chunk_seconds=1.25, frames_per_chunk=8))
    assert [len(s.frames) for s in segs] == [8, 8, 5]
    assert frame_ids(segs[-1].frames) == [25, 26, 27, 28, 29]
    # rate mode inside spans
    segs = list(V.iter_video_chunks(videos[kind], chunk_seconds=2.0, fps=2.0))
    assert [frame_ids(s.frames) for s in segs] == [[0, 5, 10, 15], [20, 25]]


# --- embeddings ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_model():
    from perception_encoder.clip import CLIP

    return randomize(CLIP(tiny_clip_config()))


def test_embed_video_file_whole_video(videos, clip_model):
    out = embed_video_file(clip_model, videos["mp4"], _tf, num_frames=4, batch_size=3)
    frames = V.load_video(videos["mp4"], 4)
    pixels = torch.stack([_tf(Image.fromarray(f.numpy())) for f in frames])
    with torch.no_grad():
        ref = F.normalize(clip_model.encode_image(pixels), dim=-1)
        ref_video = clip_model.encode_video(pixels[None], normalize=True)[0]
    torch.testing.assert_close(out["frame_embeddings"], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["embedding"], ref.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["embedding"], ref_video, atol=1e-5, rtol=1e-5)
    assert out["normalized_frames"] and len(out["segments"]) == 1
    assert out["frame_times"] == pytest.approx([0.0, 0.9, 1.9, 2.9])
    assert out["segments"][0]["end"] == pytest.approx(3.0)
    # raw mode: plain mean of unnormalised embeddings
    raw = embed_video_file(clip_model.visual, videos["mp4"], _tf, num_frames=4, normalize=False)
    with torch.no_grad():
        torch.testing.assert_close(raw["embedding"], clip_model.visual(pixels).mean(0), atol=1e-5, rtol=1e-5)


def test_embed_video_file_chunks(videos, clip_model):
    out = embed_video_file(clip_model, videos["mkv"], _tf, num_frames=2, chunk_seconds=1.5)
    assert [(s["start"], s["num_frames"]) for s in out["segments"]] == [(0.0, 2), (1.5, 2)]
    assert out["frame_embeddings"].shape == (4, 16)
    seg_means = torch.stack([s["embedding"] for s in out["segments"]])
    torch.testing.assert_close(out["embedding"], seg_means.mean(0))
    assert out["frame_times"] == pytest.approx([0.0, 1.4, 1.5, 2.9])
    # segments differ (different frames), and each frame embedding is unit length
    assert not torch.allclose(seg_means[0], seg_means[1])
    torch.testing.assert_close(out["frame_embeddings"].norm(dim=-1), torch.ones(4))


def test_embed_video_needs_pooled_model(videos):
    from perception_encoder.vision import VisionTransformer

    tower = randomize(
        VisionTransformer(tiny_vision_config(pool_type="none", output_dim=None, use_ln_post=False))
    )
    with pytest.raises(TypeError, match="patch_features"):
        embed_video_file(tower, videos["mp4"], _tf)


# --- datasets ------------------------------------------------------------------------------------------


def test_video_dataset_skips_and_reports_bad_files(videos, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    ds = V.VideoDataset([videos["mp4"], bad, videos["mkv"]], _tf, num_frames=4)
    ds = pickle.loads(pickle.dumps(ds))  # workers receive a pickled copy
    assert len(ds) == 3
    frames, index = ds[0]
    assert frames.shape == (4, 3, 32, 32) and frames.dtype == torch.float32 and index == 0
    assert isinstance(ds[1], V.VideoFailure) and "bad.mp4" in ds[1].error

    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=V.collate_videos)
    (batch,) = list(loader)
    assert batch.frames.shape == (2, 4, 3, 32, 32) and batch.indices == [0, 2]
    assert [f.index for f in batch.failures] == [1] and batch.failures[0].path == str(bad)
    torch.testing.assert_close(batch.frames[0], frames)


def test_collate_videos_variable_lengths_and_all_failed(videos):
    ds = V.VideoDataset([videos["mp4"]], _tf, fps=2.0, max_frames=3)
    short = V.VideoDataset([videos["mp4"]], _tf, fps=1.0)
    batch = V.collate_videos([ds[0], (short[0][0], 1)])  # 3 frames each: stacked
    assert batch.frames.shape == (2, 3, 3, 32, 32)
    batch = V.collate_videos([ds[0], (short[0][0][:2], 1)])
    assert isinstance(batch.frames, list) and [len(f) for f in batch.frames] == [3, 2]
    empty = V.collate_videos([V.VideoFailure(0, "x.mp4", "broken")])
    assert empty.frames is None and empty.indices == [] and len(empty.failures) == 1

"""The dense-feature commands end to end: features, pca, similarity, correspond, track."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import randomize, tiny_clip_config, tiny_vision_config
from perception_encoder import dense, factory
from perception_encoder.cli.main import main
from perception_encoder.clip import CLIP
from perception_encoder.vision import VisionTransformer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny CLIP and a tiny token tower saved as checkpoints the commands load with --model PATH."""
    d = tmp_path_factory.mktemp("models")
    clip = randomize(CLIP(tiny_clip_config()))
    tower = randomize(
        VisionTransformer(
            tiny_vision_config(image_size=64, pool_type="none", output_dim=None, use_ln_post=False)
        )
    )
    return {
        "clip": (str(factory.save(clip, d / "clip.safetensors")), clip),
        "tower": (str(factory.save(tower, d / "tower.safetensors")), tower),
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    a = np.zeros((48, 64, 3), np.uint8)
    a[:] = (30, 120, 30)
    a[12:30, 20:40] = (250, 20, 20)
    b = np.roll(a, 8, axis=1)
    Image.fromarray(a).save(d / "a.png")
    Image.fromarray(b).save(d / "b.jpg")
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    return d


def run(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def ok(*args: str):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def test_features_command(models, images, tmp_path):
    path, tower = models["tower"]
    out = tmp_path / "f.npy"
    result = ok("features", images / "a.png", "--model", path, "--layer", "0", "--out", out)
    assert "8x8x32" in result.output and str(out) in result.output
    saved = np.load(out)
    expected = dense.patch_features(tower, images / "a.png", layer=0)
    np.testing.assert_allclose(saved, expected.numpy(), atol=1e-5)
    out2 = tmp_path / "f.safetensors"
    ok("features", images / "a.png", "-m", path, "--image-size", "32x48", "--norm", "-o", out2)
    assert dense.load_features(out2).shape == (4, 6, 32)
    # a CLIP checkpoint: its vision tower
    ok("features", images / "a.png", "-m", models["clip"][0], "-o", out)
    assert np.load(out).shape == (4, 4, 32)


def test_features_bad_inputs(models, images, tmp_path):
    path = models["tower"][0]
    r = run("features", images / "a.png", "-m", path, "-o", tmp_path / "f.txt")
    assert r.exit_code == 2 and ".npy or .safetensors" in r.output
    r = run("features", images / "missing.png", "-m", path, "-o", tmp_path / "f.npy")
    assert r.exit_code == 2 and "missing.png" in r.output
    r = run("features", images / "broken.png", "-m", path, "-o", tmp_path / "f.npy")
    assert r.exit_code == 1 and "broken.png" in r.output
    r = run("features", images / "a.png", "-m", path, "--layer", "9", "-o", tmp_path / "f.npy")
    assert r.exit_code == 1 and "out of range" in r.output
    r = run("features", images / "a.png", "-m", path, "--image-size", "big", "-o", tmp_path / "f.npy")
    assert r.exit_code == 2 and "not a size" in r.output
    r = run("features", images / "a.png", "-m", str(tmp_path / "nope.safetensors"), "-o", tmp_path / "f.npy")
    assert r.exit_code == 1 and "cannot load model" in r.output
    assert not (tmp_path / "f.npy").exists()


def test_pca_command(models, images, tmp_path):
    path = models["tower"][0]
    out = tmp_path / "pca.png"
    ok("pca", images / "a.png", "-m", path, "--out", out)
    fig = Image.open(out)
    assert fig.size == (64 * 2 + 8, 48)
    right = np.asarray(fig)[:, 72:]
    assert len(np.unique(right.reshape(-1, 3), axis=0)) > 4  # a real colour map, not a flat picture
    ok("pca", images / "a.png", "-m", path, "--foreground", "0.5", "--smooth", "-o", out)
    right = np.asarray(Image.open(out))[:, 72:]
    assert (right == 0).all(-1).any()  # background drawn black
    r = run("pca", images / "a.png", "-m", path, "-o", tmp_path / "pca.jpg")
    assert r.exit_code == 2 and ".png" in r.output


def test_similarity_command_point_and_text(models, images, tmp_path):
    out = tmp_path / "sim.png"
    result = ok("similarity", images / "a.png", "--point", "30,20", "-m", models["tower"][0], "-o", out)
    assert "point (30, 20)" in result.output and "max 1.000" in result.output
    assert Image.open(out).size == (136, 48)
    result = ok("similarity", images / "a.png", "--text", "a red square", "-m", models["clip"][0], "-o", out)
    assert "'a red square'" in result.output
    assert Image.open(out).size == (136, 48)


def test_similarity_command_errors(models, images, tmp_path):
    out = tmp_path / "sim.png"
    tower, clip = models["tower"][0], models["clip"][0]
    r = run("similarity", images / "a.png", "-m", tower, "-o", out)
    assert r.exit_code == 2 and "exactly one of --point" in r.output
    r = run("similarity", images / "a.png", "--point", "1,1", "--text", "x", "-m", clip, "-o", out)
    assert r.exit_code == 2 and "exactly one of --point" in r.output
    r = run("similarity", images / "a.png", "--point", "64,10", "-m", tower, "-o", out)
    assert r.exit_code == 2 and "outside the 64x48 image" in r.output
    r = run("similarity", images / "a.png", "--point", "ten", "-m", tower, "-o", out)
    assert r.exit_code == 2 and "not a point" in r.output
    r = run("similarity", images / "a.png", "--text", "a cat", "-m", tower, "-o", out)
    assert r.exit_code == 1 and "CLIP" in r.output
    assert not out.exists()


def test_correspond_command(models, images, tmp_path):
    out = tmp_path / "match.png"
    result = ok(
        "correspond", images / "a.png", images / "b.jpg", "-m", models["tower"][0], "-k", "10", "-o", out
    )
    assert "10 correspondences" in result.output
    assert Image.open(out).size == (64 * 2 + 8, 48)
    result = ok("correspond", images / "a.png", images / "a.png", "-m", models["tower"][0], "-o", out)
    assert "50 correspondences, best similarity 1.000" in result.output
    r = run("correspond", images / "a.png", images / "broken.png", "-m", models["tower"][0], "-o", out)
    assert r.exit_code == 1 and "broken.png" in r.output


def _square_frames(n=5):
    frames = np.zeros((n, 64, 64, 3), np.uint8)
    frames[..., 1] = 120
    truth = np.zeros((n, 64, 64), bool)
    for i in range(n):
        x = 8 + 4 * i
        frames[i, 16:36, x : x + 20] = (250, 20, 20)
        truth[i, 16:36, x : x + 20] = True
    return frames, truth


def test_track_command_frame_folder(models, tmp_path):
    frames, truth = _square_frames()
    src = tmp_path / "frames"
    src.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(src / f"{i:05d}.jpg", quality=98)
    mask = Image.fromarray(truth[0].astype(np.uint8), mode="P")
    mask.putpalette([0, 0, 0, 200, 30, 30])
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "masks"
    result = ok(
        "track", src, "--mask", tmp_path / "mask.png", "-m", models["tower"][0], "--overlay", "-o", out
    )
    assert "wrote 5 masks" in result.output
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == [f"{i:05d}.png" for i in range(5)]
    first = Image.open(out / "00000.png")
    assert first.mode == "P" and first.getpalette()[:6] == [0, 0, 0, 200, 30, 30]
    for i in range(1, 5):
        m = np.array(Image.open(out / f"{i:05d}.png")) == 1
        assert (m & truth[i]).sum() / (m | truth[i]).sum() > 0.6
    assert len(list((out / "overlay").glob("*.png"))) == 5
    # --max-frames stops early
    ok(
        "track",
        src,
        "--mask",
        tmp_path / "mask.png",
        "-m",
        models["tower"][0],
        "--max-frames",
        "2",
        "-o",
        tmp_path / "two",
    )
    assert len(list((tmp_path / "two").glob("*.png"))) == 2


def test_track_command_video_and_rgb_mask(models, tmp_path):
    av = pytest.importorskip("av")
    frames, truth = _square_frames(4)
    path = tmp_path / "clip.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=5)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    for f in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[truth[0]] = (255, 255, 0)
    Image.fromarray(rgb).save(tmp_path / "mask.png")
    out = tmp_path / "masks"
    ok("track", path, "--mask", tmp_path / "mask.png", "-m", models["tower"][0], "-o", out, "--radius", "3")
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    last = Image.open(out / "00003.png")
    assert last.mode == "P" and last.getpalette()[3:6] == [255, 255, 0]
    m = np.array(last) == 1
    assert (m & truth[3]).sum() / (m | truth[3]).sum() > 0.5
    assert torch.equal(
        torch.from_numpy(np.array(Image.open(out / "00000.png")) == 1), torch.from_numpy(truth[0])
    )


def test_track_command_errors(models, tmp_path):
    tower = models["tower"][0]
    frames, truth = _square_frames(2)
    src = tmp_path / "frames"
    src.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(src / f"{i:05d}.png")
    Image.fromarray(truth[0, :32].astype(np.uint8) * 255).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "blank.png")
    Image.fromarray(truth[0].astype(np.uint8) * 255).save(tmp_path / "mask.png")
    r = run("track", src, "--mask", tmp_path / "small.png", "-m", tower, "-o", tmp_path / "o")
    assert r.exit_code == 1 and "mask is 32x64" in r.output
    r = run("track", src, "--mask", tmp_path / "blank.png", "-m", tower, "-o", tmp_path / "o")
    assert r.exit_code == 2 and "single value" in r.output
    (tmp_path / "bad.mp4").write_text("not a video")
    r = run("track", tmp_path / "bad.mp4", "--mask", tmp_path / "mask.png", "-m", tower, "-o", tmp_path / "o")
    assert r.exit_code == 1 and "bad.mp4" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("track", empty, "--mask", tmp_path / "mask.png", "-m", tower, "-o", tmp_path / "o")
    assert r.exit_code == 1 and "no frame images" in r.output
    # a grey 0/255 mask is written back with the same values
    ok("track", src, "--mask", tmp_path / "mask.png", "-m", tower, "-o", tmp_path / "grey")
    back = np.array(Image.open(tmp_path / "grey" / "00001.png"))
    assert set(np.unique(back)) <= {0, 255} and (back == 255).any()

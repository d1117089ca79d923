"""`pe embed` and `pe classify` end to end with a tiny saved model, mixed good and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import randomize, tiny_clip_config, tiny_vision_config
from perception_encoder.cli.main import main
from perception_encoder.clip import CLIP
from perception_encoder.factory import save
from perception_encoder.transforms import image_transform
from perception_encoder.vision import VisionTransformer


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = randomize(CLIP(tiny_clip_config()), seed=5)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save(model, path)
    return path, model


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, sub in enumerate(["", "sub", "sub"]):
        p = root / sub / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 30, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    (root / "broken.jpg").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    return root, paths


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_embed_folder_skips_bad_files_and_matches_the_model(model_file, images, tmp_path):
    path, model = model_file
    root, good = images
    out = tmp_path / "emb.npy"
    result = _run("embed", root, "--out", out, "--model", path, "--batch-size", 2)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.jpg" in result.output and "empty.png" in result.output
    emb = np.load(out)
    names = out.with_suffix(".paths.txt").read_text().splitlines()
    assert emb.shape == (3, 16) and sorted(names) == sorted(map(str, good))
    tf = image_transform(32)
    with torch.no_grad():
        want = model.encode_image(torch.stack([tf(n) for n in names]))
    np.testing.assert_allclose(emb, want.numpy(), rtol=1e-5, atol=1e-6)


def test_embed_parquet_layer_and_normalize(model_file, images, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    path, model = model_file
    root, good = images
    out = tmp_path / "emb.parquet"
    result = _run("embed", *good, "--out", out, "--model", path, "--layer", 0, "--normalize")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("path").to_pylist() == [str(p) for p in good]
    emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    with torch.no_grad():
        tokens = model.visual.forward_features(image_transform(32)(good[0])[None], layer=0)
        want = torch.nn.functional.normalize(tokens[:, 1:].mean(1), dim=-1)
    np.testing.assert_allclose(emb[0], want[0].numpy(), rtol=1e-5, atol=1e-6)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_embed_video_is_mean_of_frames(model_file, tmp_path):
    av = pytest.importorskip("av")
    path, model = model_file
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(12):
            frame = np.zeros((32, 32, 3), np.uint8)
            frame[:, : 2 + 2 * i] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "v.npy"
    result = _run("embed", video, "--out", out, "--model", path, "--frames", 4)
    assert result.exit_code == 0, result.output
    emb = np.load(out)
    from perception_encoder.video import load_video

    frames = load_video(video, num_frames=4)
    tf = image_transform(32)
    with torch.no_grad():
        want = model.encode_image(torch.stack([tf(f.numpy()) for f in frames])).mean(0)
    assert emb.shape == (1, 16)
    np.testing.assert_allclose(emb[0], want.numpy(), rtol=1e-4, atol=1e-5)

    # one rule: --normalize gives normalize(encode_video(frames, normalize=True)), without it encode_video
    pixels = torch.stack([tf(f.numpy()) for f in frames])[None]
    for flag, want in [
        ("--normalize", torch.nn.functional.normalize(model.encode_video(pixels, normalize=True), dim=-1)),
        ("--no-normalize", model.encode_video(pixels)),
    ]:
        result = _run("embed", video, "--out", out, "--model", path, "--frames", 4, flag)
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(np.load(out)[0], want[0].detach().numpy(), rtol=1e-4, atol=1e-5)

    # a 12-frame video asked for 200 frames: its 12 frames, each once
    result = _run("embed", video, "--out", out, "--model", path, "--frames", 200)
    assert result.exit_code == 0, result.output
    every = torch.stack([tf(f.numpy()) for f in load_video(video, num_frames=None)])
    assert len(every) == 12
    with torch.no_grad():
        np.testing.assert_allclose(
            np.load(out)[0], model.encode_image(every).mean(0).numpy(), rtol=1e-4, atol=1e-5
        )


def test_embed_errors(model_file, images, tmp_path):
    path, _ = model_file
    root, _ = images
    assert (
        "give a folder for a dataset, or a file ending with .npy or .parquet"
        in _run("embed", root, "--out", tmp_path / "x.csv", "--model", path).output
    )
    missing = _run("embed", tmp_path / "nope", "--out", tmp_path / "x.npy", "--model", path)
    assert missing.exit_code != 0 and "nope" in missing.output
    only_bad = _run("embed", root / "broken.jpg", "--out", tmp_path / "x.npy", "--model", path)
    assert only_bad.exit_code != 0 and "none of the 1 files" in only_bad.output
    unknown = _run("embed", root, "--out", tmp_path / "x.npy", "--model", "PE-Core-B16-22")
    assert unknown.exit_code != 0 and "PE-Core-B16-224" in unknown.output


def test_classify_json_and_table(model_file, images):
    path, model = model_file
    root, good = images
    result = _run(
        "classify", *good, root / "broken.jpg", "--labels", "red, green ,blue", "--model", path, "--json"
    )
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output
    rows = json.loads(result.output[result.output.index("[") :])
    assert [r["path"] for r in rows] == [str(p) for p in good]
    for r in rows:
        assert list(r["probs"]) == ["red", "green", "blue"]
        assert abs(sum(r["probs"].values()) - 1) < 1e-5
    table = _run("classify", good[0], "--labels", "red,green", "--model", path, "--template", "a {} thing")
    assert table.exit_code == 0 and "%" in table.output and "green" in table.output and "#2" in table.output


def test_classify_errors(model_file, images, tmp_path):
    path, _ = model_file
    _, good = images
    assert "at least one label" in _run("classify", good[0], "--labels", " , ", "--model", path).output
    assert (
        "exactly one '{}'"
        in _run("classify", good[0], "--labels", "a", "--template", "x", "--model", path).output
    )
    vision = tmp_path / "vision.safetensors"
    save(randomize(VisionTransformer(tiny_vision_config())), vision)
    res = _run("classify", good[0], "--labels", "a,b", "--model", vision)
    assert res.exit_code != 0 and "needs a CLIP model" in res.output


def test_checkpoint_alone_brings_its_own_config(model_file, images, tmp_path):
    path, _ = model_file
    _, good = images
    out = tmp_path / "c.npy"
    result = _run("embed", good[0], "--out", out, "--checkpoint", path)
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (1, 16)


def test_public_api_names_resolve():
    import perception_encoder as pe

    for name in pe.__all__:
        assert getattr(pe, name) is not None, name
    assert callable(pe.tokenizer) and callable(pe.load)

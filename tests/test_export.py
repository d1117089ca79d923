"""ONNX export: onnxruntime against PyTorch (relative error <= 1e-4) at other batch sizes, frame counts and
text lengths than the export's example; external data; metadata; `pe export onnx`; `pe embed --backend`."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from conftest import randomize, rel_err, released_config, tiny_clip_config, tiny_vision_config, token_ids
from perception_encoder.cli.main import main
from perception_encoder.clip import CLIP
from perception_encoder.factory import save
from perception_encoder.vision import VisionTransformer

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from perception_encoder.export import OnnxEncoder, export_onnx  # noqa: E402
from perception_encoder.export import onnx as onnx_mod  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def clip():
    return randomize(CLIP(tiny_clip_config()), seed=3)


@pytest.fixture(scope="module")
def graphs(clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {
        w: export_onnx(clip, folder / f"tiny-{w}.onnx", what=w, name="tiny")
        for w in ("image", "text", "video")
    }


def test_image_graph_has_a_dynamic_batch(clip, graphs):
    enc = OnnxEncoder(graphs["image"])
    assert (enc.what, enc.image_size, enc.output_dim, enc.model_name) == ("image", 32, 16, "tiny")
    with torch.no_grad():
        for batch in (1, 2, 5):
            x = torch.randn(batch, 3, 32, 32)
            out = enc.encode_image(x)
            assert out.shape == (batch, 16) and out.dtype == torch.float32
            assert rel_err(out, clip.encode_image(x)) <= TOL


def test_text_graph_has_dynamic_batch_and_length_and_trims(clip, graphs):
    enc = OnnxEncoder(graphs["text"])
    assert (enc.what, enc.context_length, enc.vocab_size) == ("text", 16, 49408)
    with torch.no_grad():
        for lengths in ([16], [3, 7, 5], [4, 4]):
            ids = token_ids(len(lengths), 16, lengths, seed=len(lengths))
            want = clip.encode_text(ids)
            assert rel_err(enc.encode_text(ids), want) <= TOL
            # the raw graph at full context equals the trimmed run
            assert rel_err(enc.run(ids), want) <= TOL
            assert rel_err(enc.encode_text(ids.numpy()), want) <= TOL


def test_video_graph_has_dynamic_batch_and_frame_count(clip, graphs):
    enc = OnnxEncoder(graphs["video"])
    with torch.no_grad():
        for batch, frames in ((1, 1), (2, 3), (1, 8)):
            v = torch.randn(batch, frames, 3, 32, 32)
            assert rel_err(enc.encode_video(v), clip.encode_video(v)) <= TOL


def test_released_geometry_exports_within_tolerance(tmp_path):
    """A real PE-Core-B16 vision tower (cut to one block): 14x14 RoPE grid with CLS, 8-head pooling."""
    cfg = released_config("PE-Core-B16-224", depth=1).vision
    visual = randomize(VisionTransformer(cfg), seed=1)
    path = export_onnx(visual, tmp_path / "b16.onnx", normalize=True)
    enc = OnnxEncoder(path)
    assert enc.normalize
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(enc(x), F.normalize(visual(x), dim=-1)) <= TOL


def test_token_model_exports_tokens_and_refuses_video(tmp_path):
    cfg = tiny_vision_config(pool_type="none", output_dim=None, ls_init_value=0.1, use_ln_post=False)
    tower = randomize(VisionTransformer(cfg))
    path = export_onnx(tower, tmp_path / "tokens.onnx")
    enc = OnnxEncoder(path)
    assert enc.output_name == "tokens"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = enc.encode_image(x)
        assert out.shape == (3, 17, 32)
        assert rel_err(out, tower(x)) <= TOL
    with pytest.raises(ValueError, match="pooled model"):
        export_onnx(tower, tmp_path / "v.onnx", what="video")
    with pytest.raises(ValueError, match="text tower"):
        export_onnx(tower, tmp_path / "t.onnx", what="text")


def test_external_data_forced_and_automatic(clip, tmp_path, monkeypatch):
    path = export_onnx(clip, tmp_path / "ext.onnx", external_data=True)
    data = tmp_path / "ext.onnx.data"
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(OnnxEncoder(path).encode_image(x), clip.encode_image(x)) <= TOL
    # re-exporting without external data removes the stale data file
    export_onnx(clip, path, external_data=False, check=False)
    assert not data.exists()
    # models above the protobuf limit get external data without being asked (limit lowered here)
    monkeypatch.setattr(onnx_mod, "PROTOBUF_LIMIT", 2**26 + 1000)
    export_onnx(clip, tmp_path / "auto.onnx", check=False)
    assert (tmp_path / "auto.onnx.data").is_file()


def test_a_bf16_model_is_exported_in_float32_without_touching_it(tmp_path):
    bf = randomize(CLIP(tiny_clip_config()), seed=3).to(torch.bfloat16)
    path = export_onnx(bf, tmp_path / "bf.onnx")
    assert next(bf.parameters()).dtype == torch.bfloat16
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = copy.deepcopy(bf).float().encode_image(x)  # the bf16 weights, computed in float32
        assert rel_err(OnnxEncoder(path).encode_image(x), want) <= TOL


def test_errors(clip, graphs, tmp_path):
    with pytest.raises(ValueError, match="what must be one of"):
        export_onnx(clip, tmp_path / "x.onnx", what="audio")
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_onnx(clip, tmp_path / "x.pt")
    with pytest.raises(TypeError, match="CLIP or VisionTransformer"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(FileNotFoundError):
        OnnxEncoder(tmp_path / "missing.onnx")
    image, text = OnnxEncoder(graphs["image"]), OnnxEncoder(graphs["text"])
    with pytest.raises(ValueError, match="encodes images, not texts"):
        image.encode_text(token_ids(1, 16, [4]))
    with pytest.raises(ValueError, match=r"shape \(B, 3, 32, 32\)"):
        image.encode_image(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="out of range"):
        text.encode_text(torch.full((1, 4), 50000))
    with pytest.raises(ValueError, match="context length"):
        text.encode_text(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(TypeError, match="integers"):
        text.encode_text(torch.zeros(1, 4))


def test_threads_share_one_session(clip, graphs):
    import threading

    enc = OnnxEncoder(graphs["image"])
    xs = [torch.randn(1 + i % 3, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    want = [enc(x) for x in xs]
    got: list = [None] * len(xs)

    def work(i):
        got[i] = enc(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


# --- command line ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(clip, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save(clip, path)
    return path


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_pe_export_onnx(model_file, clip, tmp_path):
    out = tmp_path / "text.onnx"
    result = _run("export", "onnx", "--checkpoint", model_file, "--what", "text", "-o", out)
    assert result.exit_code == 0, result.output
    assert "checked against PyTorch" in result.output
    ids = token_ids(2, 16, [5, 9])
    with torch.no_grad():
        assert rel_err(OnnxEncoder(out).encode_text(ids), clip.encode_text(ids)) <= TOL
    result = _run("export", "onnx", "--checkpoint", model_file, "--what", "video", "-o", tmp_path / "v.onnx")
    assert result.exit_code == 0, result.output
    assert OnnxEncoder(tmp_path / "v.onnx").what == "video"
    bad = _run("export", "onnx", "--checkpoint", model_file, "-o", tmp_path / "x.bin")
    assert bad.exit_code != 0 and ".onnx" in bad.output


def test_pe_embed_with_the_onnxruntime_backend(model_file, graphs, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 30 + 10 * i, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_text("not an image")
    runs = {
        "torch": ("--checkpoint", model_file),
        "ort": ("--checkpoint", model_file, "--backend", "onnxruntime"),
        "ort-file": ("--backend", "onnxruntime", "--onnx", graphs["image"]),
    }
    out = {}
    for key, extra in runs.items():
        result = _run("embed", folder, "-o", tmp_path / f"{key}.npy", *extra)
        assert result.exit_code == 0, result.output
        assert "embedded 3 of 4 files" in result.output
        out[key] = np.load(tmp_path / f"{key}.npy")
    ref = torch.from_numpy(out["torch"])
    assert rel_err(torch.from_numpy(out["ort"]), ref) <= TOL
    assert rel_err(torch.from_numpy(out["ort-file"]), ref) <= TOL
    # what the onnxruntime backend cannot do is refused clearly
    cases = [
        (("--backend", "onnxruntime", "--onnx", graphs["text"]), "encodes texts"),
        (("--checkpoint", model_file, "--backend", "onnxruntime", "--layer", "0"), "--layer needs the torch"),
        (("--onnx", graphs["image"]), "--onnx needs --backend onnxruntime"),
        (("--checkpoint", model_file, "--backend", "onnxruntime", "--dtype", "bf16"), "float32 on the CPU"),
    ]
    for extra, message in cases:
        result = _run("embed", folder, "-o", tmp_path / "x.npy", *extra)
        assert result.exit_code != 0 and message in result.output, result.output

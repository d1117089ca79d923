"""The ``pe`` commands with PE-AV and PE-A-Frame models, end to end: tiny models in transformers' real
format (a save_pretrained folder with its tokenizer), generated audio and video files."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "PeAudioVideoModel"):  # the parity reference: transformers >= 5 (tested 5.24)
    pytest.skip("this transformers has no PE-AV models", allow_module_level=True)
pytest.importorskip("timm")
pytest.importorskip("av")

from av_helpers import tiny_config, write_transformers_folder  # noqa: E402
from perception_encoder.av.audio import load_audio  # noqa: E402
from perception_encoder.av.frames import load_frames  # noqa: E402
from perception_encoder.cli.main import main  # noqa: E402
from perception_encoder.embedding import read_embeddings  # noqa: E402
from perception_encoder.factory import load  # noqa: E402
from test_av_audio import tone, write_audio, write_video  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("av-cli")
    write_transformers_folder(tiny_config("av"), root / "pe-av", seed=1)
    write_transformers_folder(tiny_config("a-frame"), root / "pe-a-frame", seed=2)
    media = root / "media"
    media.mkdir()
    write_audio(media / "bark.wav", tone(440, 0.5, 16000)[None], 16000)
    write_audio(media / "rain.flac", tone(1200, 0.3, 44100)[None], 44100)
    write_video(media / "street.mp4", frames=6, sound=tone(300, 0.6, 44100))
    write_video(root / "silent.mp4", frames=4)
    (media / "broken.wav").write_bytes(b"RIFF" + bytes(range(200)))
    return root


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_embed_audio_files_and_the_sound_of_a_video(files, tmp_path):
    out = tmp_path / "emb.npy"
    media = files / "media"
    result = _run("embed", media, "--model", files / "pe-av", "--out", out, "--modality", "audio")
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.wav" in result.output  # named, and the run goes on
    values, names = read_embeddings(out)
    assert sorted(map(str, names)) == sorted(str(media / n) for n in ("bark.wav", "rain.flac", "street.mp4"))
    model = load(str(files / "pe-av"))
    with torch.no_grad():
        for row, name in zip(values, names, strict=True):
            expected = model.encode_audio(load_audio(name)[None])[0]
            assert torch.allclose(torch.from_numpy(row), expected, atol=1e-5)


def test_embed_modalities_of_videos(files, tmp_path):
    model = load(str(files / "pe-av"))
    video = files / "media" / "street.mp4"
    frames = load_frames(video, model.config.image_size, model.config.num_frames)
    sound = load_audio(video)
    with torch.no_grad():
        expected = {
            "video": model.encode_video(frames[None])[0],
            "audio-video": model.encode_audio_video(sound[None], frames[None])[0],
        }
    for modality, want in expected.items():
        out = tmp_path / f"{modality}.npy"
        result = _run("embed", video, "--model", files / "pe-av", "--out", out, "--modality", modality)
        assert result.exit_code == 0, result.output
        values, _ = read_embeddings(out)
        assert torch.allclose(torch.from_numpy(values[0]), want, atol=1e-5)
    # no sound track, no audio-video; an audio file has no frames: both skipped with the reason
    out = tmp_path / "av.npy"
    result = _run(
        "embed", files / "silent.mp4", files / "media" / "bark.wav", video,
        "--model", files / "pe-av", "--out", out, "--modality", "audio-video",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "silent.mp4" in result.output and "no audio stream" in result.output
    assert "bark.wav" in result.output and "no video frames" in result.output
    assert len(read_embeddings(out)[0]) == 1


def test_embed_refuses_what_does_not_apply(files, tmp_path):
    media = files / "media" / "bark.wav"
    result = _run("embed", media, "--model", files / "pe-av", "--out", tmp_path / "ds")
    assert result.exit_code != 0 and ".npy or .parquet" in result.output
    result = _run("embed", media, "--model", files / "pe-av", "--out", tmp_path / "x.npy", "--layer", "2")
    assert result.exit_code != 0 and "--layer" in result.output
    result = _run("embed", media, "--out", tmp_path / "y.npy", "--modality", "audio")  # the bundled PE-Core
    assert result.exit_code != 0 and "--modality applies to PE-AV" in result.output
    result = _run("embed", media, "--model", files / "pe-a-frame", "--out", tmp_path / "z.npy")
    assert result.exit_code != 0 and "detect-sounds" in result.output


def test_classify_audio_with_text_labels(files):
    labels = ["dog barking", "rain", "people talking"]
    result = _run(
        "classify", files / "media" / "bark.wav", files / "media" / "broken.wav",
        "--labels", ",".join(labels), "--model", files / "pe-av", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["path"] for r in rows] == [str(files / "media" / "bark.wav")]
    probs = rows[0]["probs"]
    assert list(probs) == labels and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    model = load(str(files / "pe-av"))
    with torch.no_grad():
        audio = model.encode_audio(load_audio(files / "media" / "bark.wav")[None])
        ids, mask = model.tokenize(labels)
        expected = model.logits("audio_text", audio, model.encode_text(ids, mask, "audio")).softmax(-1)[0]
    assert list(probs.values()) == pytest.approx(expected.tolist(), abs=1e-5)
    table = _run("classify", files / "media", "--labels", "rain,dog", "--model", files / "pe-av")
    assert table.exit_code == 0 and "street.mp4" in table.output and "rain.flac" in table.output


def test_detect_sounds_prints_spans(files):
    wav = files / "media" / "bark.wav"
    result = _run(
        "detect-sounds", wav, files / "media" / "broken.wav", "--prompt", "dog barking", "--prompt", "rain",
        "--model", files / "pe-a-frame", "--threshold", "0.5", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "broken.wav" in result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 1 and rows[0]["path"] == str(wav) and rows[0]["seconds"] == pytest.approx(0.5)
    model = load(str(files / "pe-a-frame"))
    expected = model.detect(load_audio(wav), ["dog barking", "rain"], threshold=0.5)[0]
    for prompt in ("dog barking", "rain"):
        got = [(s["start"], s["end"], s["score"]) for s in rows[0]["spans"][prompt]]
        assert got == pytest.approx([tuple(s) for s in expected[prompt]])
        assert all(0 <= s <= e <= 0.52 for s, e, _ in got)  # 13 frames of 40 ms
    table = _run(
        "detect-sounds", wav, "-p", "dog barking", "--model", files / "pe-a-frame", "--threshold", "0"
    )
    assert table.exit_code == 0 and "dog barking" in table.output and "0.00\t0.52" in table.output
    wrong = _run("detect-sounds", wav, "-p", "dog", "--model", files / "pe-av")
    assert wrong.exit_code != 0 and "PE-A-Frame" in wrong.output


def test_eval_retrieval_of_audio(files, tmp_path):
    media = files / "media"
    csv = tmp_path / "captions.csv"
    csv.write_text(
        f"path,caption\n{media / 'bark.wav'},a dog barking\n{media / 'rain.flac'},rain\n{media / 'broken.wav'},x\n"
    )
    result = _run("eval", "retrieval", csv, "--model", files / "pe-av", "--recall-at", "1,2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["task"] == "audio_retrieval" and report["num_skipped"] == 1 and report["num_captions"] == 2
    assert set(report["metrics"]) == {
        f"{d}_recall@{k}" for d in ("audio_to_text", "text_to_audio") for k in (1, 2)
    }
    assert report["metrics"]["audio_to_text_recall@2"] == 1.0  # two candidates
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(f"path,caption\n{media / 'bark.wav'},a dog\n{media / 'street.mp4'},a street\n")
    result = _run("eval", "retrieval", mixed, "--model", files / "pe-av")
    assert result.exit_code != 0 and "--modality" in result.output
    result = _run("eval", "retrieval", mixed, "--model", files / "pe-av", "--modality", "audio", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["num_evaluated"] == 2


def test_models_lists_the_audio_visual_families():
    result = _run("models", "--family", "a-frame")
    assert result.exit_code == 0, result.output
    names = [line.split("\t")[0] for line in result.output.splitlines()[1:]]
    assert names == ["pe-a-frame-small", "pe-a-frame-base", "pe-a-frame-large"]
    result = _run("models", "--family", "av")
    assert "pe-av-large-16-frame" in result.output and "audio 1792/6" in result.output

"""``pe eval`` subcommands on tiny generated datasets with a tiny random model saved to disk."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import randomize, tiny_clip_config
from perception_encoder.cli.main import main
from perception_encoder.clip import CLIP
from perception_encoder.eval import class_folder, evaluate_zeroshot, read_templates
from perception_encoder.factory import load, save
from test_eval_data import make_class_folder, make_split, write_bad_files, write_video


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save(randomize(CLIP(tiny_clip_config()), seed=5), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = make_class_folder(tmp_path_factory.mktemp("data"), ["red", "green", "blue", "yellow", "purple"], 2)
    write_bad_files(root / "green_thing")
    return root


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "templates.txt"
    path.write_text("a photo of a {}.\na {} on a dark background\n")
    return path


def run(*args):
    result = CliRunner().invoke(main, ["eval", *map(str, args)])
    return result


def test_zeroshot_cli_writes_the_library_numbers(checkpoint, folder, templates, tmp_path):
    out = tmp_path / "res" / "zs.json"
    r = run(
        "zeroshot",
        folder,
        "--checkpoint",
        checkpoint,
        "--templates",
        templates,
        "--batch-size",
        3,
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["task"] == "zeroshot" and data["model"] == str(checkpoint)
    assert data["num_skipped"] == 2 and data["num_evaluated"] == 10 and data["num_classes"] == 5
    expected = evaluate_zeroshot(load(checkpoint), class_folder(folder), templates=read_templates(templates))
    assert data["metrics"] == expected["metrics"]
    assert data["metrics"]["top5"] is not None
    # the table goes to stdout, the skipped files are named
    assert "top1" in r.stdout and "mean_per_class_recall" in r.stdout
    assert "broken.png" in r.stderr and "empty.jpg" in r.stderr


def test_json_to_stdout_and_classnames_file(checkpoint, folder, templates, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"a {c} disc" for c in ["blue", "green", "purple", "red", "yellow"]) + "\n")
    r = run("zeroshot", folder, "-c", checkpoint, "--templates", templates, "--classnames", names, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)  # stdout holds only the JSON
    assert data["num_classes"] == 5
    assert "top1" in r.stderr  # the table moved to stderr
    expected = evaluate_zeroshot(
        load(checkpoint),
        class_folder(folder, ["a blue disc", "a green disc", "a purple disc", "a red disc", "a yellow disc"]),
        templates=read_templates(templates),
    )
    assert data["metrics"] == expected["metrics"]
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("one\ntwo\n")
    r = run("zeroshot", folder, "-c", checkpoint, "--classnames", wrong)
    assert r.exit_code == 1 and "2 class names were given for 5 class folders" in r.output


def test_retrieval_cli(checkpoint, folder, tmp_path):
    csv_file = tmp_path / "caps.csv"
    rows = ["image,caption"]
    for p in sorted(folder.rglob("*.png")):
        colour = p.parent.name.split("_")[0]
        rows.append(f"{p.relative_to(folder)},a {colour} disc;a round {colour} thing")
    csv_file.write_text("\n".join(rows) + "\n")
    (tmp_path / "red_thing").symlink_to(folder / "red_thing")  # paths are relative to the CSV
    for d in ("green_thing", "blue_thing", "yellow_thing", "purple_thing"):
        (tmp_path / d).symlink_to(folder / d)
    r = run("retrieval", csv_file, "-c", checkpoint, "--caption-sep", ";", "--recall-at", "1,2,50", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["num_captions"] == 20 and data["num_skipped"] == 1  # broken.png has an image name
    assert set(data["metrics"]) == {
        f"{d}_recall@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 2, 50)
    }
    assert data["metrics"]["text_to_image_recall@50"] is None
    assert 0 <= data["metrics"]["image_to_text_recall@1"] <= data["metrics"]["image_to_text_recall@2"] <= 1
    r = run("retrieval", csv_file, "-c", checkpoint, "--recall-at", "0,5")
    assert r.exit_code == 2 and "recall cut-offs" in r.output


def test_knn_and_linear_probe_cli(checkpoint, tmp_path):
    root = make_split(tmp_path / "split", ["red", "green", "blue"], train=3, test=2)
    r = run("knn", root, "-c", checkpoint, "--k", 3, "--layer", 0, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["task"] == "knn" and data["k"] == 3 and data["features"] == "mean of block 0"
    assert data["num_train"] == 9 and data["num_evaluated"] == 6
    r = run(
        "linear-probe",
        root,
        "-c",
        checkpoint,
        "--layer",
        -1,
        "--pool",
        "cls",
        "--C",
        0.5,
        "--C",
        2,
        "--json",
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["features"] == "cls of block -1" and data["c"] in (0.5, 2.0)
    assert data["metrics"]["top1"] is not None
    r = run("knn", root, "-c", checkpoint, "--layer", 7)
    assert r.exit_code == 1 and "out of range" in r.output
    r = run("knn", root, "-c", checkpoint, "--layer", 0, "--pool", "pooled")
    assert r.exit_code == 2 and "--pool mean or --pool cls" in r.output


def test_video_cli(checkpoint, templates, tmp_path):
    pytest.importorskip("av")
    for colour in ("red", "blue"):
        (tmp_path / "v" / colour).mkdir(parents=True)
        write_video(tmp_path / "v" / colour / "a.mp4", colour, n=5)
    r = run(
        "video-zeroshot",
        tmp_path / "v",
        "-c",
        checkpoint,
        "--templates",
        templates,
        "--frames",
        3,
        "--json",
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["task"] == "video_zeroshot" and data["num_evaluated"] == 2 and data["num_frames"] == 3
    csv_file = tmp_path / "videos.csv"
    csv_file.write_text("path,caption\nv/red/a.mp4,a red square\nv/blue/a.mp4,a blue square\n")
    r = run("video-retrieval", csv_file, "-c", checkpoint, "--frames", 3, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["metrics"]["video_to_text_recall@1"] is not None
    assert data["metrics"]["text_to_video_recall@5"] is None  # only 2 videos


def test_default_model_and_load_errors(checkpoint, folder, templates, monkeypatch):
    from perception_encoder.cli import options as common

    monkeypatch.setattr(common, "default_model", lambda: "PE-Core-B16-224")  # no weights offline
    r = run("zeroshot", folder, "--templates", templates)
    assert r.exit_code == 1 and "cannot load model 'PE-Core-B16-224'" in r.output
    monkeypatch.setattr(common, "default_model", lambda: str(checkpoint))
    r = run("zeroshot", folder, "--templates", templates, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == str(checkpoint)
    r = run("zeroshot", folder, "--model", "PE-Core-Nope")
    assert r.exit_code == 1 and "unknown model name" in r.output


def test_nothing_readable_fails_after_writing_the_report(checkpoint, templates, tmp_path):
    write_bad_files(tmp_path / "ds" / "cat")
    out = tmp_path / "r.json"
    r = run("zeroshot", tmp_path / "ds", "-c", checkpoint, "--templates", templates, "--out", out)
    assert r.exit_code == 1 and "nothing was evaluated" in r.output
    assert json.loads(out.read_text())["num_skipped"] == 2

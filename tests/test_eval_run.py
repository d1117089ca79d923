"""End-to-end evaluation runs on tiny generated datasets with a tiny random model.

Each evaluator is checked against the same numbers computed by hand (image by image, through the public
model API), for bad-file handling, and for giving identical metrics at batch sizes 1, 7 and 64.
"""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from conftest import randomize, tiny_clip_config, tiny_vision_config
from perception_encoder.clip import CLIP
from perception_encoder.embedding import ImageLoader, embed_files, stack_images
from perception_encoder.eval import (
    FeatureSpec,
    captions_csv,
    class_folder,
    evaluate_knn,
    evaluate_linear_probe,
    evaluate_retrieval,
    evaluate_video_retrieval,
    evaluate_video_zeroshot,
    evaluate_zeroshot,
    knn_scores,
    labeled_files,
    retrieval_metrics,
    split_folders,
)
from perception_encoder.eval.metrics import classification_metrics
from perception_encoder.transforms import image_transform
from perception_encoder.vision import VisionTransformer
from perception_encoder.zeroshot import zero_shot_classifier, zero_shot_logits
from test_eval_data import make_class_folder, make_split, write_bad_files, write_video

TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


@pytest.fixture(scope="module")
def model():
    return randomize(CLIP(tiny_clip_config()), seed=3)


@pytest.fixture(scope="module")
def tf():
    return image_transform(32)


@pytest.fixture(scope="module")
def six_classes(tmp_path_factory):
    """6 colour classes x 2 images, a duplicate file and two unreadable files."""
    root = make_class_folder(
        tmp_path_factory.mktemp("six"), ["red", "green", "blue", "yellow", "purple", "orange"], 2
    )
    shutil.copy(root / "red_thing" / "0.png", root / "red_thing" / "copy.png")
    write_bad_files(root / "blue_thing")
    return root


@torch.no_grad()
def _embed_one_by_one(model, paths, tf):
    return torch.cat([model.encode_image(tf(p)[None]) for p in paths])


def test_zeroshot_matches_manual_computation_and_skips_bad_files(model, tf, six_classes):
    data = class_folder(six_classes)
    result = evaluate_zeroshot(model, data, templates=TEMPLATES, batch_size=5)
    bad = {str(six_classes / "blue_thing" / n) for n in ("broken.png", "empty.jpg")}
    assert result["num_samples"] == 15 and result["num_skipped"] == 2 and result["num_evaluated"] == 13
    assert {s["path"] for s in result["skipped"]} == bad
    assert all(s["reason"] for s in result["skipped"])
    assert result["num_classes"] == 6 and result["num_templates"] == 2

    good = [(p, y) for p, y in zip(data.paths, data.labels, strict=True) if str(p) not in bad]
    emb = _embed_one_by_one(model, [p for p, _ in good], tf)
    classifier = zero_shot_classifier(model, data.classnames, TEMPLATES)
    logits = zero_shot_logits(emb, classifier)
    targets = torch.tensor([y for _, y in good])
    preds = logits.argmax(1)
    assert result["metrics"]["top1"] == pytest.approx((preds == targets).double().mean().item(), abs=1e-12)
    recalls = [(preds[targets == c] == c).double().mean().item() for c in targets.unique()]
    assert result["metrics"]["mean_per_class_recall"] == pytest.approx(sum(recalls) / len(recalls), abs=1e-12)
    per_class = result["per_class"]
    assert [row["class"] for row in per_class] == data.classnames
    # sorted classes: blue, green, orange, purple, red (with a copied file), yellow
    assert [row["samples"] for row in per_class] == [2, 2, 2, 2, 3, 2]
    assert [row["recall"] for row in per_class] == pytest.approx(recalls, abs=1e-12)
    top5 = (logits.topk(5, dim=1).indices == targets[:, None]).any(1).double().mean().item()
    assert result["metrics"]["top5"] == pytest.approx(top5, abs=1e-12)


def test_zeroshot_top5_is_null_with_fewer_than_five_classes(model, tmp_path):
    root = make_class_folder(tmp_path, ["red", "green", "blue"], 2)
    result = evaluate_zeroshot(model, class_folder(root), templates=TEMPLATES)
    assert result["metrics"]["top5"] is None
    assert 0.0 <= result["metrics"]["top1"] <= 1.0


def test_duplicate_files_share_one_embedding(model, tf, six_classes):
    paths = [six_classes / "red_thing" / "0.png", six_classes / "red_thing" / "1.png"] * 3
    paths.insert(2, six_classes / "blue_thing" / "broken.png")
    out = embed_files(paths, ImageLoader(tf), stack_images(model.encode_image), batch_size=2)
    assert out.index == [0, 1, 3, 4, 5, 6]
    assert [s.path for s in out.skipped] == [str(paths[2])]
    assert torch.equal(out.values[0], out.values[2]) and torch.equal(out.values[0], out.values[4])
    assert torch.equal(out.values[1], out.values[5])
    assert not torch.equal(out.values[0], out.values[1])


def test_loader_workers_give_the_same_embeddings(model, tf, six_classes):
    paths = sorted(six_classes.rglob("*.*"))
    serial = embed_files(paths, ImageLoader(tf), stack_images(model.encode_image), batch_size=4)
    workers = embed_files(
        paths, ImageLoader(tf), stack_images(model.encode_image), batch_size=4, num_workers=2
    )
    assert workers.index == serial.index and len(serial.skipped) == 2
    assert [s.path for s in workers.skipped] == [s.path for s in serial.skipped]
    assert torch.equal(workers.values, serial.values)


def _retrieval_csv(root, tmp_path):
    lines = ["path,caption"]
    for colour in ("red", "green", "blue", "yellow", "purple", "orange"):
        for i in range(2):
            p = root / f"{colour}_thing" / f"{i}.png"
            lines.append(f"{p},a {colour} ball")
            lines.append(f"{p},a round {colour} thing|a {colour} circle")
    lines.append(f"{root / 'red_thing' / 'copy.png'},a red ball")
    lines.append(f"{root / 'blue_thing' / 'broken.png'},a blue ball that cannot be seen")
    csv_file = tmp_path / "caps.csv"
    csv_file.write_text("\n".join(lines) + "\n")
    return csv_file


def test_retrieval_matches_manual_computation(model, tf, six_classes, tmp_path):
    data = captions_csv(_retrieval_csv(six_classes, tmp_path), caption_sep="|")
    assert len(data.paths) == 14 and len(data.captions) == 12 * 3 + 2
    result = evaluate_retrieval(model, data, batch_size=4)
    assert result["num_samples"] == 14 and result["num_skipped"] == 1
    assert result["num_captions"] == 37 and result["num_captions_dropped"] == 1
    emb = _embed_one_by_one(model, data.paths[:13], tf)  # the broken file is the last one
    from perception_encoder.eval.embed import embed_texts

    txt = embed_texts(model, data.captions[:37])
    expected = retrieval_metrics(emb, txt, data.owners[:37])
    assert result["metrics"] == pytest.approx(expected, abs=1e-12)
    assert set(expected) == {
        f"{d}_recall@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)
    }


def test_metrics_do_not_depend_on_the_batch_size(model, six_classes, tmp_path):
    data = class_folder(six_classes)
    caps = captions_csv(_retrieval_csv(six_classes, tmp_path), caption_sep="|")
    split = make_split(tmp_path / "split", ["red", "green", "blue", "yellow", "purple"], train=3, test=2)
    shutil.copy(split / "train" / "red_thing" / "0.png", split / "train" / "red_thing" / "dup.png")
    train, test = split_folders(split)
    runs = {}
    for bs in (1, 7, 64):
        zs = evaluate_zeroshot(model, data, templates=TEMPLATES, batch_size=bs)
        rt = evaluate_retrieval(model, caps, batch_size=bs)
        kn = evaluate_knn(model, train, test, k=3, batch_size=bs)
        lp = evaluate_linear_probe(model, train, test, batch_size=bs)
        runs[bs] = [(r["metrics"], r["num_evaluated"], r["num_skipped"]) for r in (zs, rt, kn, lp)]
    assert runs[1] == runs[7] == runs[64]
    # the metrics are real numbers, not all undefined
    assert runs[1][0][0]["top5"] is not None and runs[1][1][0]["text_to_image_recall@1"] is not None


def test_knn_matches_manual_computation_at_any_layer(model, tf, tmp_path):
    root = make_split(tmp_path / "split", ["red", "green", "blue"], train=3, test=2)
    train, test = split_folders(root)
    with torch.no_grad():

        def block_mean(paths):
            return torch.cat(
                [model.visual.forward_features(tf(p)[None], layer=0)[:, 1:].mean(1) for p in paths]
            )

        for spec, feats in [
            (FeatureSpec(), lambda ps: _embed_one_by_one(model, ps, tf)),
            (FeatureSpec("mean", 0), block_mean),
        ]:
            result = evaluate_knn(model, train, test, k=4, temperature=0.1, features=spec)
            scores = knn_scores(
                feats(train.paths), torch.tensor(train.labels), feats(test.paths), 3, k=4, temperature=0.1
            )
            expected = classification_metrics(scores, torch.tensor(test.labels))
            assert result["metrics"] == pytest.approx(expected, abs=1e-12)
            assert result["features"] == spec.describe() and result["k"] == 4
            assert result["metrics"]["top5"] is None


def test_linear_probe_separates_colours_and_picks_c(model, tmp_path):
    root = make_split(tmp_path / "split", ["red", "green", "blue"], train=6, test=3)
    train, test = split_folders(root)
    result = evaluate_linear_probe(model, train, test, features=FeatureSpec("mean", -1), c=[0.01, 1.0, 100.0])
    assert result["c"] in (0.01, 1.0, 100.0) and result["converged"] is True
    assert result["num_train"] == 18 and result["num_evaluated"] == 9
    # solid colours are linearly separable even in a random network's features
    assert result["metrics"]["top1"] == 1.0
    assert result["metrics"]["mean_per_class_recall"] == 1.0


def test_probes_work_on_vision_only_models(tmp_path):
    root = make_split(tmp_path / "split", ["red", "green", "blue"], train=2, test=1)
    train, test = split_folders(root)
    tokens_model = randomize(
        VisionTransformer(tiny_vision_config(pool_type="none", output_dim=None, use_ln_post=False))
    )
    result = evaluate_knn(tokens_model, train, test, k=2)  # pooled = mean of the output patch tokens
    assert result["num_evaluated"] == 3 and result["metrics"]["top1"] is not None
    no_cls = randomize(VisionTransformer(tiny_vision_config(use_cls_token=False)))
    with pytest.raises(ValueError, match="no CLS token"):
        evaluate_knn(no_cls, train, test, features=FeatureSpec("cls", 0))
    with pytest.raises(IndexError, match="out of range"):
        evaluate_knn(no_cls, train, test, features=FeatureSpec("mean", 5))
    with pytest.raises(TypeError, match="needs a CLIP model"):
        evaluate_zeroshot(no_cls, class_folder(root / "test"))


def test_linear_probe_without_sklearn_says_how_to_install(model, tmp_path, monkeypatch):
    root = make_split(tmp_path / "split", ["red", "green"], train=2, test=1)
    train, test = split_folders(root)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"perception-encoder\[eval\]"):
        evaluate_linear_probe(model, train, test)


def test_all_files_unreadable_gives_null_metrics(model, tmp_path):
    write_bad_files(tmp_path / "ds" / "cat")
    (tmp_path / "ds" / "dog").mkdir()
    (tmp_path / "ds" / "dog" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = evaluate_zeroshot(model, class_folder(tmp_path / "ds"), templates=TEMPLATES)
    assert result["num_evaluated"] == 0 and result["num_skipped"] == 3
    assert result["metrics"] == {"top1": None, "top5": None, "mean_per_class_recall": None}


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("videos")
    for c, colour in enumerate(["red", "green", "blue"]):
        (root / colour).mkdir()
        for i in range(2):
            write_video(root / colour / f"{i}.mp4", colour, n=6 + 3 * i, seed=c * 10 + i)
    (root / "green" / "bad.mp4").write_bytes(b"not a video")
    return root


def test_video_zeroshot_and_retrieval_match_manual_computation(model, tf, video_folder, tmp_path):
    from perception_encoder.video import load_video

    data = labeled_files(video_folder, videos=True)
    assert len(data) == 7
    result = evaluate_video_zeroshot(model, data, templates=TEMPLATES, num_frames=4, batch_size=2)
    assert result["num_skipped"] == 1 and result["num_evaluated"] == 6 and result["num_frames"] == 4
    good = [(p, y) for p, y in zip(data.paths, data.labels, strict=True) if p.name != "bad.mp4"]
    with torch.no_grad():
        emb = torch.cat(
            [
                model.encode_video(
                    torch.stack([tf(f.numpy()) for f in load_video(p, 4)])[None], normalize=True
                )
                for p, _ in good
            ]
        )
    classifier = zero_shot_classifier(model, data.classnames, TEMPLATES)
    expected = classification_metrics(zero_shot_logits(emb, classifier), torch.tensor([y for _, y in good]))
    assert result["metrics"] == pytest.approx(expected, abs=1e-12)

    csv_file = tmp_path / "videos.csv"
    rows = [f"{p},a {p.parent.name} square" for p in data.paths]
    csv_file.write_text("video,caption\n" + "\n".join(rows) + "\n")
    caps = captions_csv(csv_file)
    rt = evaluate_video_retrieval(model, caps, num_frames=4, batch_size=3)
    assert rt["num_skipped"] == 1 and rt["num_captions"] == 6
    assert set(rt["metrics"]) == {
        f"{d}_recall@{k}" for d in ("video_to_text", "text_to_video") for k in (1, 5, 10)
    }
    assert rt["metrics"]["video_to_text_recall@10"] is None  # only 6 captions
    from perception_encoder.eval.embed import embed_texts

    keep = [j for j, o in enumerate(caps.owners) if caps.paths[o].name != "bad.mp4"]
    row = {o: r for r, o in enumerate(o for o in range(len(caps.paths)) if caps.paths[o].name != "bad.mp4")}
    txt = embed_texts(model, [caps.captions[j] for j in keep])
    vids = torch.stack([emb[[str(p) for p, _ in good].index(str(caps.paths[o]))] for o in sorted(row)])
    expected_rt = retrieval_metrics(vids, txt, [row[caps.owners[j]] for j in keep])
    assert rt["metrics"]["text_to_video_recall@1"] == pytest.approx(
        expected_rt["text_to_image_recall@1"], abs=1e-12
    )
    assert rt["metrics"]["video_to_text_recall@5"] == pytest.approx(
        expected_rt["image_to_text_recall@5"], abs=1e-12
    )


def test_report_json_and_table(tmp_path, capsys):
    from perception_encoder.cli.evaluate import print_report
    from perception_encoder.eval import to_json, write_json

    result = {
        "task": "zeroshot",
        "data": "ds",
        "metrics": {"top1": 0.5, "top5": None, "mean_per_class_recall": float("nan")},
        "num_samples": 3,
        "num_evaluated": 2,
        "num_skipped": 1,
        "skipped": [{"path": "ds/[x].png", "reason": "cannot read image ds/[x].png: the file is empty"}],
    }
    assert '"top5": null' in to_json(result) and '"mean_per_class_recall": null' in to_json(result)
    write_json(result, tmp_path / "a" / "r.json")
    assert (tmp_path / "a" / "r.json").read_text().startswith("{")
    print_report(result)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "cannot read image ds/[x].png: the file is empty" in text  # brackets are not rich markup

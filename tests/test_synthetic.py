"""The synthetic shapes generator: determinism, the held-out split, and the files it writes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from perception_encoder.train.synthetic import (
    COLORS,
    HELD_OUT,
    SHAPES,
    ShapesGenerator,
    all_class_names,
    class_names,
    combinations,
    write_captions,
    write_image_folder,
)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


def test_same_seed_same_samples():
    a, b = ShapesGenerator(seed=3, image_size=48), ShapesGenerator(seed=3, image_size=48)
    for i in range(20):
        sa, sb = a.sample(i), b.sample(i)
        assert sa.caption == sb.caption and sa.label == sb.label and sa.kind == sb.kind
        assert np.array_equal(_pixels(sa.image), _pixels(sb.image))
        assert sa.image.size == (48, 48) and sa.image.mode == "RGB"


def test_different_seeds_and_indices_differ():
    a, b = ShapesGenerator(seed=0), ShapesGenerator(seed=1)
    captions_a = [a.sample(i).caption for i in range(30)]
    captions_b = [b.sample(i).caption for i in range(30)]
    assert captions_a != captions_b
    assert len(set(captions_a)) > 15  # varied captions, not one repeated
    assert not np.array_equal(_pixels(a.sample(0).image), _pixels(a.sample(1).image))


def test_every_kind_is_drawn():
    gen = ShapesGenerator(seed=0)
    kinds = {gen.sample(i).kind for i in range(200)}
    assert kinds == {"single", "many", "pair", "word"}


def test_held_out_split_is_disjoint_from_training():
    train, test = set(combinations("train")), set(combinations("test"))
    assert test == set(HELD_OUT)
    assert not train & test
    assert len(train) + len(test) == len(COLORS) * len(SHAPES)
    # every colour and every shape is still seen in training, only not in the held-out pairs
    assert {c for c, _ in train} == set(COLORS) and {s for _, s in train} == set(SHAPES)
    # telling held-out classes apart needs both words: no colour or shape identifies one alone
    assert len({c for c, _ in test}) < len(test) and len({s for _, s in test}) < len(test)


def test_training_captions_never_name_a_held_out_pair():
    gen = ShapesGenerator(seed=0)
    held = [f"{c} {s}" for c, s in HELD_OUT]
    for i in range(400):
        s = gen.sample(i, "train")
        assert not any(h in s.caption for h in held), s.caption
        if s.label is not None:
            assert tuple(s.label.split(" ")) not in HELD_OUT


def test_test_split_draws_held_out_objects():
    gen = ShapesGenerator(seed=0)
    labels = {gen.sample(i, "test").label for i in range(100)} - {None}
    assert labels and labels <= set(class_names("test"))


def test_object_image_draws_the_named_colour():
    gen = ShapesGenerator(seed=0, image_size=64)
    s = gen.object_image("red", "square", 0)
    assert s.label == "red square" and s.caption.endswith("red square")
    px = _pixels(s.image).reshape(-1, 3).astype(int)
    red = np.array(COLORS["red"])
    assert (np.abs(px - red).sum(axis=1) < 40).sum() > 50  # a patch of pure red is on the canvas
    with pytest.raises(ValueError, match="unknown class"):
        gen.object_image("mauve", "square", 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        ShapesGenerator().sample(0, "val")
    with pytest.raises(ValueError, match="image_size"):
        ShapesGenerator(image_size=4)


def test_write_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "zs", "test", per_class=2, image_size=32)
    folders = sorted(p.name for p in root.iterdir())
    assert folders == sorted(class_names("test"))
    assert all(len(list((root / f).glob("*.png"))) == 2 for f in folders)
    assert set(all_class_names()) >= set(folders)


def test_write_captions_csv_parquet_and_txt(tmp_path):
    table = write_captions(tmp_path / "d", "train", 5, image_size=32, caption_files=True)
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 5 and set(rows[0]) == {"path", "caption", "label"}
    for r in rows:
        img = Image.open(tmp_path / "d" / r["path"])
        assert img.size == (32, 32)
        assert (tmp_path / "d" / r["path"]).with_suffix(".txt").read_text().strip() == r["caption"]
    pq = write_captions(tmp_path / "p", "train", 3, image_size=32, table="captions.parquet")
    import pyarrow.parquet as papq

    assert papq.read_table(pq).num_rows == 3

"""Evaluation datasets from files (class folders, CSVs, class-name and template lists), and the generators
of the tiny datasets the other evaluation tests use."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from perception_encoder.eval.data import (
    captions_csv,
    class_folder,
    imagenet_classnames,
    imagenet_templates,
    labeled_csv,
    labeled_files,
    read_classnames,
    read_templates,
    split_folders,
)

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 40),
    "purple": (140, 40, 170),
    "orange": (240, 140, 20),
}


def draw_image(path: Path, colour: str, seed: int, size=(40, 36)) -> Path:
    """A shape of ``colour`` at a random place on a random dark background."""
    rng = random.Random(seed)
    bg = tuple(rng.randrange(0, 60) for _ in range(3))
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    x, y = rng.randrange(0, size[0] // 2), rng.randrange(0, size[1] // 2)
    r = rng.randrange(8, 16)
    d.ellipse([x, y, x + 2 * r, y + 2 * r], fill=COLOURS[colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_bad_files(folder: Path) -> list[Path]:
    """An image-named file of garbage bytes and an empty one."""
    folder.mkdir(parents=True, exist_ok=True)
    garbage = folder / "broken.png"
    garbage.write_bytes(b"this is not a png at all")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    return [garbage, empty]


def make_class_folder(root: Path, colours, per_class: int = 3, seed: int = 0, prefix: str = "") -> Path:
    """ROOT/<prefix><colour>_thing/<n>.png images."""
    for c, colour in enumerate(colours):
        for i in range(per_class):
            draw_image(root / f"{prefix}{colour}_thing" / f"{i}.png", colour, seed * 1000 + c * 100 + i)
    return root


def make_split(root: Path, colours, train: int = 4, test: int = 2) -> Path:
    make_class_folder(root / "train", colours, train, seed=1)
    make_class_folder(root / "test", colours, test, seed=2)
    return root


def write_video(path: Path, colour: str, n: int = 10, size=(32, 32), seed: int = 0) -> Path:
    """A short video of a ``colour`` square moving over a dark background."""
    import av

    rng = np.random.default_rng(seed)
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    stream.bit_rate = 4_000_000
    for i in range(n):
        a = np.full((size[1], size[0], 3), int(rng.integers(0, 40)), np.uint8)
        x = (3 * i) % (size[0] - 12)
        a[8:20, x : x + 12] = COLOURS[colour]
        for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


# --- tests ----------------------------------------------------------------------------------------------


def test_bundled_imagenet_lists():
    names = imagenet_classnames()
    templates = imagenet_templates()
    assert len(names) == 1000 and len(templates) == 80
    assert names[0] == "tench" and names[1] == "goldfish" and names[-1] == "toilet paper"
    assert all(t.count("{}") == 1 for t in templates)
    assert "a photo of a {}." in templates and "itap of a {}." in templates
    assert len(set(templates)) == 80


def test_class_folder_names_labels_and_skips_non_images(tmp_path):
    root = make_class_folder(tmp_path / "ds", ["red", "blue"], per_class=2)
    (root / "red_thing" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / "blue_thing" / "nested").mkdir()
    draw_image(root / "blue_thing" / "nested" / "x.png", "blue", 5)
    ds = class_folder(root)
    assert ds.classnames == ["blue thing", "red thing"]  # sorted folders, '_' -> ' '
    assert len(ds) == 5
    assert [p.name for p in ds.paths] == ["0.png", "1.png", "x.png", "0.png", "1.png"]
    assert ds.labels == [0, 0, 0, 1, 1]


def test_classnames_file_plain_and_mapping(tmp_path):
    root = make_class_folder(tmp_path / "ds", ["red", "blue"], per_class=1)
    plain = tmp_path / "names.txt"
    plain.write_text("a blue object\n\na red object\n")
    assert class_folder(root, read_classnames(plain)).classnames == ["a blue object", "a red object"]
    mapping = tmp_path / "map.txt"
    mapping.write_text("red_thing\tcrimson\nblue_thing\tnavy\n")
    assert read_classnames(mapping) == {"red_thing": "crimson", "blue_thing": "navy"}
    assert class_folder(root, read_classnames(mapping)).classnames == ["navy", "crimson"]
    # a list naming every folder is matched by name (order free); extra names are distractor classes
    named = tmp_path / "named.txt"
    named.write_text("red thing\nblue thing\n")
    ds = class_folder(root, read_classnames(named))
    assert ds.classnames == ["red thing", "blue thing"] and ds.labels == [1, 0]
    distract = tmp_path / "distract.txt"
    distract.write_text("green thing\nred thing\nteal thing\nblue thing\n")
    ds = class_folder(root, read_classnames(distract))
    assert ds.classnames == ["green thing", "red thing", "teal thing", "blue thing"] and ds.labels == [3, 1]
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("only one\n")
    with pytest.raises(ValueError, match="1 class names were given for 2 class folders"):
        class_folder(root, read_classnames(wrong))
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("red_thing\tred\nblue\n")
    with pytest.raises(ValueError, match="line 2"):
        read_classnames(mixed)


def test_templates_file_validation(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("a photo of a {}.\n{} in the wild\n")
    assert read_templates(good) == ["a photo of a {}.", "{} in the wild"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\nno placeholder here\n")
    with pytest.raises(ValueError, match="line 2"):
        read_templates(bad)
    with pytest.raises(FileNotFoundError, match="templates file"):
        read_templates(tmp_path / "missing.txt")


def test_labeled_csv_header_names_and_indices(tmp_path):
    draw_image(tmp_path / "img" / "a.png", "red", 1)
    draw_image(tmp_path / "img" / "b.png", "blue", 2)
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("label,image\nred,img/a.png\nblue,img/b.png\nred,img/b.png\n")
    ds = labeled_csv(csv_file)
    assert ds.classnames == ["blue", "red"] and ds.labels == [1, 0, 1]
    assert ds.paths[0] == tmp_path / "img" / "a.png"  # relative to the CSV's folder
    # integer labels index a class-names list; names from the list are accepted too
    idx = tmp_path / "idx.csv"
    idx.write_text("img/a.png,2\nimg/b.png,crimson\n")  # no header: two columns
    ds2 = labeled_csv(idx, ["navy", "crimson", "scarlet"])
    assert ds2.labels == [2, 1] and ds2.classnames == ["navy", "crimson", "scarlet"]
    with pytest.raises(ValueError, match="row 2: label 'teal'"):
        bad = tmp_path / "bad.csv"
        bad.write_text("path,label\nimg/a.png,teal\n")
        labeled_csv(bad, ["navy", "crimson"])
    odd = tmp_path / "odd.csv"
    odd.write_text("foo,bar,baz\n1,2,3\n")
    with pytest.raises(ValueError, match="cannot find the file and label columns"):
        labeled_csv(odd)
    assert labeled_files(csv_file).classnames == ["blue", "red"]
    # a captions table where only some rows carry a class (as train.synthetic writes them)
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("path,caption,label\nimg/a.png,a red disc,red\nimg/b.png,the word cat,\n")
    ds3 = labeled_csv(mixed)
    assert (
        len(ds3) == 1 and ds3.classnames == ["red"] and ds3.notes == ["1 rows without a label were left out"]
    )


def test_captions_csv_repeated_rows_and_separator(tmp_path):
    csv_file = tmp_path / "caps.csv"
    csv_file.write_text(
        "image,caption\n"
        "a.png,a red ball\n"
        "b.png,a blue ball | a ball that is blue\n"
        "a.png,something red\n"
        "a.png,a red ball\n"  # exact duplicate: dropped
        "c.png,\n"  # no caption: a distractor
    )
    plain = captions_csv(csv_file)
    assert [p.name for p in plain.paths] == ["a.png", "b.png", "c.png"]
    assert plain.captions == ["a red ball", "a blue ball | a ball that is blue", "something red"]
    assert plain.owners == [0, 1, 0]
    split = captions_csv(csv_file, caption_sep="|")
    assert split.captions == ["a red ball", "a blue ball", "a ball that is blue", "something red"]
    assert split.owners == [0, 1, 1, 0]
    assert split.notes == ["1 files have no caption and are only candidates"]


def test_split_folders_share_classes(tmp_path):
    root = tmp_path / "ds"
    make_class_folder(root / "train", ["red", "blue", "green"], 1)
    make_class_folder(root / "test", ["red", "blue"], 1)
    train, test = split_folders(root)
    assert train.classnames == test.classnames == ["blue thing", "green thing", "red thing"]
    assert test.labels == [0, 2]
    with pytest.raises(FileNotFoundError, match="no train/ split"):
        split_folders(root / "train")


def test_missing_and_empty_datasets_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        labeled_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        labeled_files(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(ValueError, match="no files ending in"):
        labeled_files(tmp_path / "empty")

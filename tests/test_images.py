"""Image loading errors and folder expansion."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

import perception_encoder as pe
from perception_encoder.errors import ImageLoadError
from perception_encoder.images import IMAGE_EXTENSIONS, is_image_file, iter_image_files, load_image


def _image(h: int = 40, w: int = 56, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(h * w)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("fmt, ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp")])
def test_load_formats(tmp_path, fmt, ext):
    path = tmp_path / f"a.{ext}"
    _image().save(path, format=fmt)
    img = load_image(path)
    assert img.size == (56, 40) and img.mode == "RGB"
    assert load_image(str(path)).size == (56, 40)
    assert load_image(path.read_bytes()).size == (56, 40)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA"])
def test_original_mode_is_kept(tmp_path, mode):
    path = tmp_path / "m.png"
    _image(mode=mode).save(path)
    assert load_image(path).mode == mode


def test_pixels_are_decoded_and_file_closed(tmp_path):
    path = tmp_path / "g.gif"
    frames = [_image(mode="P"), _image(mode="P").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    img = load_image(path)
    assert np.array(img).shape == (40, 56)
    # no file handle was kept: the file can be replaced right away (matters on Windows and for workers)
    os.replace(tmp_path / "g.gif", tmp_path / "h.gif")
    assert np.array(img).shape == (40, 56)


def test_pil_input_is_returned_decoded(tmp_path):
    img = _image()
    assert load_image(img) is img
    path = tmp_path / "lazy.png"
    img.save(path)
    lazy = Image.open(path)
    assert np.array_equal(np.array(load_image(lazy)), np.array(img))


def test_exif_transpose(tmp_path):
    img = _image(20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (30, 20)
    assert load_image(path, exif_transpose=True).size == (20, 30)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match="no such file") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still work


def test_directory(tmp_path):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageLoadError, match="directory") as info:
        load_image(folder)
    assert str(folder) in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty") as info:
        load_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageLoadError, match="not a recognised image format") as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fmt, ext, keep", [("PNG", "png", 0.6), ("JPEG", "jpg", 0.5), ("PNG", "png", 0.02)])
def test_truncated_file(tmp_path, fmt, ext, keep):
    buf = io.BytesIO()
    _image(200, 300).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message or "corrupt" in message


def test_truncated_file_fails_in_transform_too(tmp_path):
    buf = io.BytesIO()
    _image(200, 300).save(buf, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[:-500])
    with pytest.raises(ImageLoadError, match="cut.png"):
        pe.image_transform(32)(path)


def test_bad_source_type():
    with pytest.raises(TypeError, match="int"):
        load_image(3)


@pytest.mark.skipif(sys.platform == "win32", reason="permissions")
def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can read anything")
    path = tmp_path / "locked.png"
    _image().save(path)
    path.chmod(0)
    try:
        with pytest.raises(ImageLoadError, match="locked.png"):
            load_image(path)
    finally:
        path.chmod(0o644)


# ---------------------------------------------------------------------------------------------------------
# folders


def _tree(root):
    files = [
        "b.jpg",
        "A.PNG",
        "notes.txt",
        "sub/c.webp",
        "sub/deeper/d.TIFF",
        "sub/deeper/e.gif",
        "sub/readme.md",
        "other/f.bmp",
        ".hidden/g.png",
        "sub/.h.jpg",
    ]
    for rel in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    return root


def test_iter_image_files_nested(tmp_path):
    root = _tree(tmp_path / "data")
    got = [p.relative_to(root).as_posix() for p in iter_image_files(root)]
    assert got == ["A.PNG", "b.jpg", "other/f.bmp", "sub/c.webp", "sub/deeper/d.TIFF", "sub/deeper/e.gif"]
    flat = [p.relative_to(root).as_posix() for p in iter_image_files(str(root), recursive=False)]
    assert flat == ["A.PNG", "b.jpg"]
    assert iter_image_files(root) == iter_image_files([root])  # deterministic


def test_iter_image_files_explicit_files_and_order(tmp_path):
    root = _tree(tmp_path / "data")
    notes = root / "notes.txt"
    got = iter_image_files([notes, root / "sub", root / "b.jpg", root / "sub" / "c.webp"])
    # explicit files are kept whatever their extension; order follows the arguments; no duplicates
    assert got == [
        notes,
        root / "sub/c.webp",
        root / "sub/deeper/d.TIFF",
        root / "sub/deeper/e.gif",
        root / "b.jpg",
    ]


def test_iter_image_files_missing_path(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match="absent"):
        iter_image_files([tmp_path, missing])


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_iter_image_files_symlink_loop(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    got = iter_image_files(root)
    assert len(got) == len(set(got)) == 6


def test_extensions():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert is_image_file("X.JPEG") and is_image_file("a/b.tif") and not is_image_file("a.txt")

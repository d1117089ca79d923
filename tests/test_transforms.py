"""The image transform against torchvision's reference pipeline (torchvision is used in tests only)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

import perception_encoder as pe
from perception_encoder.transforms import (
    ImageTransform,
    denormalize,
    image_transform,
    resize_cover_size,
    to_normalized_tensor,
)

MEAN = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_rgb(img: Image.Image) -> Image.Image:
    return img.convert("RGB")


def reference_transform(size, center_crop=False, mean=MEAN, std=MEAN, interpolation="bilinear"):
    """The reference release's pipeline: resize in the original mode, then RGB, ToTensor, Normalize."""
    interp = InterpolationMode(interpolation)
    if center_crop:
        resize = [T.Resize(size, interpolation=interp), T.CenterCrop(size)]
    else:
        resize = [T.Resize(size if isinstance(size, tuple) else (size, size), interpolation=interp)]
    return T.Compose([*resize, _to_rgb, T.ToTensor(), T.Normalize(mean, std)])


def random_image(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 1024, (h, w), dtype=np.uint16))
    # smooth-ish content plus noise so resampling actually mixes values
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 7 + yy * 3) % 256, (xx * 2 + yy * 11) % 256, (xx * yy) % 256], axis=-1)
    noise = rng.integers(0, 40, (h, w, 3))
    rgb = Image.fromarray(((base + noise) % 256).astype(np.uint8), mode="RGB")
    if mode == "P":
        return rgb.quantize(colors=64)
    return rgb.convert(mode)


# ---------------------------------------------------------------------------------------------------------
# bit-identical to torchvision


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "1", "CMYK", "I;16"])
@pytest.mark.parametrize("center_crop", [False, True])
def test_modes_match_reference(mode, center_crop):
    img = random_image(67, 101, mode, seed=1)
    ours = ImageTransform(48, center_crop=center_crop)(img)
    ref = reference_transform(48, center_crop)(img)
    assert ours.shape == (3, 48, 48) and ours.dtype == torch.float32
    assert torch.equal(ours, ref)


def test_palette_is_resized_in_palette_mode():
    # resizing before RGB conversion matters: Pillow resizes "P" with NEAREST, so the output only holds
    # palette colours, unlike converting to RGB first and resizing bilinearly
    img = random_image(50, 70, "P", seed=2)
    ours = ImageTransform(31)(img)
    rgb_first = reference_transform(31)(img.convert("RGB"))
    assert not torch.allclose(ours, rgb_first)
    palette = np.array(img.convert("RGB")).reshape(-1, 3)
    out_pixels = np.round(denormalize(ours).permute(1, 2, 0).numpy() * 255).astype(np.uint8).reshape(-1, 3)
    assert {tuple(p) for p in out_pixels} <= {tuple(p) for p in palette}


@pytest.mark.parametrize(
    "size",
    [224, 336, 384, 448, (224, 320)],
)
@pytest.mark.parametrize("hw", [(480, 640), (333, 257), (224, 224), (1, 1), (3, 500), (700, 5), (17, 29)])
def test_sizes_and_shapes_squash(size, hw):
    img = random_image(*hw, seed=hw[0])
    ours = ImageTransform(size)(img)
    ref = reference_transform(size)(img)
    expected = (size, size) if isinstance(size, int) else size
    assert ours.shape == (3, *expected)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("size", [224, 336, 384, 448])
@pytest.mark.parametrize("hw", [(480, 640), (333, 257), (224, 224), (1, 1), (3, 500), (700, 5), (449, 448)])
def test_sizes_and_shapes_center_crop(size, hw):
    img = random_image(*hw, seed=hw[1])
    ours = ImageTransform(size, center_crop=True)(img)
    ref = reference_transform(size, center_crop=True)(img)
    assert ours.shape == (3, size, size)
    assert torch.equal(ours, ref)


def test_other_mean_std_and_interpolation_match():
    img = random_image(90, 61, "RGB", seed=3)
    for interp in ["bicubic", "nearest", "lanczos", "box", "hamming"]:
        ours = ImageTransform(40, True, CLIP_MEAN, CLIP_STD, interpolation=interp)(img)
        ref = reference_transform(40, True, CLIP_MEAN, CLIP_STD, interpolation=interp)(img)
        assert torch.equal(ours, ref), interp


def test_cover_size_rule_matches_torchvision_for_square_targets():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(1, 5000, 2))
        s = int(rng.integers(1, 1000))
        assert list(resize_cover_size(h, w, (s, s))) == TF._compute_resized_output_size((h, w), [s])


@pytest.mark.parametrize("hw", [(100, 100), (480, 640), (640, 480), (50, 500), (500, 50), (224, 320)])
def test_non_square_center_crop_covers_and_crops_the_centre(hw):
    target = (224, 320)
    rh, rw = resize_cover_size(*hw, target)
    assert rh >= target[0] and rw >= target[1]
    assert rh == target[0] or rw == target[1]  # the smallest scale that covers the box
    img = random_image(*hw, seed=5)
    ours = ImageTransform(target, center_crop=True)(img)
    resized = img.resize((rw, rh), Image.Resampling.BILINEAR)
    ref = T.Compose([T.CenterCrop(target), T.ToTensor(), T.Normalize(MEAN, MEAN)])(resized)
    assert ours.shape == (3, *target)
    assert torch.equal(ours, ref)


# ---------------------------------------------------------------------------------------------------------
# input kinds


def test_inputs_path_pil_numpy_tensor_agree(tmp_path):
    img = random_image(45, 77, "RGB", seed=7)
    path = tmp_path / "im.png"
    img.save(path)
    tf = ImageTransform(32)
    arr = np.array(img)
    expected = reference_transform(32)(img)
    outs = {
        "str": tf(str(path)),
        "path": tf(path),
        "bytes": tf(path.read_bytes()),
        "pil": tf(img),
        "numpy": tf(arr),
        "tensor_hwc": tf(torch.from_numpy(arr)),
        "tensor_chw": tf(torch.from_numpy(arr).permute(2, 0, 1)),
    }
    for name, out in outs.items():
        assert torch.equal(out, expected), name


def test_grey_and_rgba_arrays_match_the_pil_modes():
    rng = np.random.default_rng(8)
    grey = rng.integers(0, 256, (33, 21), dtype=np.uint8)
    rgba = rng.integers(0, 256, (33, 21, 4), dtype=np.uint8)
    tf = ImageTransform(16)
    ref = reference_transform(16)
    assert torch.equal(tf(grey), ref(Image.fromarray(grey, "L")))
    assert torch.equal(tf(grey[:, :, None]), ref(Image.fromarray(grey, "L")))
    assert torch.equal(tf(torch.from_numpy(grey)[None]), ref(Image.fromarray(grey, "L")))
    assert torch.equal(tf(rgba), ref(Image.fromarray(rgba, "RGBA")))
    assert torch.equal(tf(torch.from_numpy(rgba).permute(2, 0, 1)), ref(Image.fromarray(rgba, "RGBA")))


def test_float_tensor_path_is_close_to_pil_path():
    img = random_image(120, 90, "RGB", seed=9)
    unit = T.ToTensor()(img)
    tf = ImageTransform(64)
    out = tf(unit)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    # torch's antialiased bilinear approximates Pillow's; pixel values agree to a few levels
    assert (out - tf(img)).abs().max() < 0.05
    # at the native size nothing is resized: exact
    native = T.ToTensor()(random_image(64, 64, seed=10))
    assert torch.equal(tf(native), T.Normalize(MEAN, MEAN)(native))
    assert torch.equal(tf(native.double()), tf(native))
    # grey and RGBA float tensors
    assert torch.equal(tf(native[:1]), tf(native[:1].expand(3, -1, -1)))
    assert torch.equal(tf(torch.cat([native, torch.ones_like(native[:1])])), tf(native))
    crop = ImageTransform(32, center_crop=True)(unit)
    assert crop.shape == (3, 32, 32)


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (np.zeros((8, 8, 2), np.uint8), ValueError, "shape"),
        (np.zeros((8, 8, 3), np.float32), TypeError, "uint8"),
        (np.zeros((2, 8, 8, 3), np.uint8), ValueError, "shape"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "empty"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), TypeError, "dtype"),
        (torch.zeros(2, 8, 8), ValueError, "(C, H, W)"),
        (torch.zeros(1, 3, 8, 8), ValueError, "(C, H, W)"),
        (torch.full((3, 8, 8), 255.0), ValueError, "[0, 1]"),
        (torch.zeros(5, 8, 7, dtype=torch.uint8), ValueError, "(C, H, W)"),
        (12, TypeError, "int"),
        ([1, 2, 3], TypeError, "list"),
    ],
)
def test_bad_inputs_raise_clear_errors(bad, exc, words):
    with pytest.raises(exc) as info:
        ImageTransform(16)(bad)
    assert words in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="interpolation"):
        ImageTransform(16, interpolation="cubic")
    with pytest.raises(ValueError, match="positive"):
        ImageTransform(0)
    with pytest.raises(TypeError, match="image_size"):
        ImageTransform((16, 16, 3))
    with pytest.raises(TypeError, match="image_size"):
        ImageTransform(True)
    with pytest.raises(ValueError, match="3 values"):
        ImageTransform(16, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="zeros"):
        ImageTransform(16, std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="PIL inputs"):
        ImageTransform(16, interpolation="lanczos")(torch.rand(3, 20, 20))


# ---------------------------------------------------------------------------------------------------------
# helpers, pickling, workers


def test_to_normalized_tensor_matches_totensor_normalize():
    for mode in ["RGB", "L", "RGBA", "P"]:
        img = random_image(13, 19, mode, seed=11)
        ref = T.Compose([_to_rgb, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])(img)
        assert torch.equal(to_normalized_tensor(img, CLIP_MEAN, CLIP_STD), ref)
    with pytest.raises(TypeError, match="PIL"):
        to_normalized_tensor(np.zeros((4, 4, 3), np.uint8))


def test_denormalize_round_trips_to_pixels():
    img = random_image(20, 30, seed=12)
    x = to_normalized_tensor(img, CLIP_MEAN, CLIP_STD)
    back = denormalize(x, CLIP_MEAN, CLIP_STD)
    assert back.min() >= 0 and back.max() <= 1
    pixels = (back * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(pixels, np.array(img))
    batch = denormalize(torch.stack([x, x]), CLIP_MEAN, CLIP_STD)
    assert batch.shape == (2, 3, 20, 30) and torch.equal(batch[1], back)
    assert denormalize(torch.full((3, 2, 2), 5.0)).max() == 1.0
    with pytest.raises(ValueError, match="3, H, W"):
        denormalize(torch.zeros(4, 2, 2))


def test_public_factory_and_pickling():
    tf = pe.image_transform((24, 40), center_crop=True, mean=CLIP_MEAN, std=CLIP_STD)
    assert isinstance(tf, pe.ImageTransform)
    assert tf.image_size == (24, 40) and tf.center_crop
    clone = pickle.loads(pickle.dumps(tf))
    assert clone == tf and repr(clone) == repr(tf)
    img = random_image(50, 60, seed=13)
    assert torch.equal(clone(img), tf(img))
    assert image_transform(24) == ImageTransform(24) != ImageTransform(24, center_crop=True)


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(self.paths[i])


def test_dataloader_with_workers(tmp_path):
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.jpg"
        random_image(30 + i * 5, 40, seed=i).save(p, quality=90)
        paths.append(str(p))
    tf = ImageTransform(24)
    loader = torch.utils.data.DataLoader(_Files(paths, tf), batch_size=3, num_workers=2)
    batches = torch.cat(list(loader))
    assert batches.shape == (6, 3, 24, 24)
    ref = reference_transform(24)
    for i, p in enumerate(paths):
        assert torch.equal(batches[i], ref(Image.open(p)))

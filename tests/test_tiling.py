"""Tiling for PE-Lang: the grid choice, the tiles themselves, native resolution, stitching (SPEC §6)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from perception_encoder.tiling import (
    candidate_grids,
    native_resolution_image,
    native_resolution_size,
    num_tiles,
    stitch_tiles,
    tile_grid,
    tile_image,
)
from perception_encoder.transforms import to_normalized_tensor


def _image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth-ish content so bicubic resampling has something to do beyond noise
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), (x + y) % 256], -1)
    noise = rng.integers(0, 40, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).convert(mode)


# --- the grid ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, max_tiles, grid",
    [
        ((224, 224), 36, (6, 6)),
        ((448, 448), 36, (6, 6)),
        ((1920, 1080), 36, (8, 4)),
        ((800, 600), 36, (7, 5)),
        ((300, 800), 36, (4, 9)),
        ((4000, 3000), 36, (4, 3)),
        ((1920, 1080), 4, (2, 2)),
    ],
)
def test_grid_table_from_spec(size, max_tiles, grid):
    assert tile_grid(*size, max_tiles=max_tiles) == grid


def test_candidate_order_matches_reference_docstring():
    # the reference documents this exact dict for 5 tiles; order decides ties
    assert candidate_grids(5) == {
        0.2: [(1, 5)],
        5.0: [(5, 1)],
        0.25: [(1, 4)],
        1.0: [(2, 2), (1, 1)],
        4.0: [(4, 1)],
        1 / 3: [(1, 3)],
        3.0: [(3, 1)],
        0.5: [(1, 2)],
        2.0: [(2, 1)],
    }
    assert list(candidate_grids(5)) == [0.2, 5.0, 0.25, 1.0, 4.0, 1 / 3, 3.0, 0.5, 2.0]


def test_grid_agrees_with_transformers_perception_lm_on_random_sizes():
    ref_mod = pytest.importorskip("transformers.models.perception_lm.image_processing_perception_lm")
    rng = random.Random(0)
    for max_tiles in (2, 4, 9, 16, 36):
        ref = ref_mod.PerceptionLMImageProcessor(max_num_tiles=max_tiles)
        sizes = [(rng.randint(1, 7000), rng.randint(1, 7000)) for _ in range(150)]
        sizes += [(rng.randint(1, 900), rng.randint(1, 900)) for _ in range(100)]  # the upscaling regime
        sizes += [(448 * a, 448 * b) for a in (1, 2, 3) for b in (1, 2, 5)]  # exact canvas edges
        for w, h in sizes:
            want = ref._fit_image_to_canvas(w, h, 448) or ref._find_closest_aspect_ratio(w, h, 448)
            assert tile_grid(w, h, max_tiles) == tuple(want), (w, h, max_tiles)


def test_grid_fallback_for_images_larger_than_every_canvas():
    # 10000x100 is wider than any 36-tile canvas: closest ratio <= 100 is 36 -> (36, 1)
    assert tile_grid(10000, 100, 36) == (36, 1)
    # portrait twin: ratios > 0.01, closest by 1/k -> (1, 36)
    assert tile_grid(100, 10000, 36) == (1, 36)
    # square and too large: ratio 1, the widest grid of that ratio
    assert tile_grid(5000, 5000, 36) == (6, 6)
    assert tile_grid(5000, 5000, 3) == (1, 1)


def test_grid_and_count_edge_cases_and_errors():
    assert tile_grid(1000, 1000, max_tiles=1) == (1, 1)
    assert num_tiles(1000, 1000, max_tiles=1) == 1
    assert num_tiles(1920, 1080, max_tiles=36) == 33
    assert tile_grid(100, 60, max_tiles=4, tile_size=32) == tile_grid(100, 60, 4, 32)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_tiles"):
            tile_grid(100, 100, max_tiles=bad)
    with pytest.raises(ValueError, match="width"):
        tile_grid(0, 100)


# --- the tiles --------------------------------------------------------------------------------------------


def test_tiles_are_thumbnail_then_row_major_cuts_of_the_bicubic_canvas():
    img = _image(100, 60)
    tiles, (gw, gh) = tile_image(img, max_tiles=6, tile_size=32)
    assert (gw, gh) == tile_grid(100, 60, 6, 32)
    assert tiles.shape == (1 + gw * gh, 3, 32, 32) and tiles.dtype == torch.float32
    # thumbnail: the whole image squashed bicubic to one tile
    thumb = to_normalized_tensor(img.resize((32, 32), Image.BICUBIC))
    assert torch.equal(tiles[0], thumb)
    # the tiles put back together row-major are the image resized bicubic to the grid's canvas
    canvas = to_normalized_tensor(img.resize((gw * 32, gh * 32), Image.BICUBIC))
    rows = [torch.cat(list(tiles[1 + r * gw : 1 + (r + 1) * gw]), dim=-1) for r in range(gh)]
    assert torch.equal(torch.cat(rows, dim=-2), canvas)
    # top-left tile is the canvas' top-left corner; the second tile is to its right
    assert torch.equal(tiles[1], canvas[:, :32, :32])
    assert torch.equal(tiles[2], canvas[:, :32, 32:64])


def test_tiles_match_the_reference_torchvision_pipeline():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    img = _image(130, 90, seed=3)
    tiles, (gw, gh) = tile_image(img, max_tiles=9, tile_size=32)

    def reference(pil, size):  # F.resize on a PIL image, ToTensor, Normalize(0.5, 0.5)
        t = tvf.to_tensor(tvf.resize(pil, size, interpolation=tvf.InterpolationMode.BICUBIC))
        return tvf.normalize(t, [0.5] * 3, [0.5] * 3)

    assert torch.equal(tiles[0], reference(img, (32, 32)))
    canvas = reference(img, (gh * 32, gw * 32))
    split = canvas.view(3, gh, 32, gw, 32).permute(1, 3, 0, 2, 4).reshape(-1, 3, 32, 32)
    assert torch.equal(tiles[1:], split)


def test_small_images_are_upscaled_onto_the_largest_grid():
    tiles, grid = tile_image(_image(20, 20), max_tiles=4, tile_size=32)
    assert grid == (2, 2) and tiles.shape == (5, 3, 32, 32)


def test_max_tiles_one_is_the_single_squashed_image():
    img = _image(90, 40)
    tiles, grid = tile_image(img, max_tiles=1, tile_size=32)
    assert grid == (1, 1) and tiles.shape == (1, 3, 32, 32)
    assert torch.equal(tiles[0], to_normalized_tensor(img.resize((32, 32), Image.BICUBIC)))


def test_tile_image_accepts_paths_arrays_tensors_and_other_modes(tmp_path):
    img = _image(70, 50, seed=1)
    want, grid = tile_image(img, max_tiles=4, tile_size=32)
    path = tmp_path / "x.png"
    img.save(path)
    array = np.array(img)
    for source in (path, str(path), array, torch.from_numpy(array).permute(2, 0, 1)):
        got, got_grid = tile_image(source, max_tiles=4, tile_size=32)
        assert got_grid == grid and torch.equal(got, want)
    grey, _ = tile_image(img.convert("L"), max_tiles=4, tile_size=32)
    assert torch.equal(grey[:, 0], grey[:, 1])  # grey converted to RGB first
    with pytest.raises(ValueError, match="uint8"):
        tile_image(array.astype(np.float32), max_tiles=4, tile_size=32)
    with pytest.raises(TypeError, match="image must be"):
        tile_image(42, max_tiles=4)


# --- native resolution ------------------------------------------------------------------------------------


def test_native_resolution_keeps_size_rounded_to_patches():
    img = _image(102, 60)
    pixels = native_resolution_image(img, patch_size=8)
    assert pixels.shape == (3, 64, 104)  # 60 -> 64, 102 -> 104: nearest multiples of 8
    ref = to_normalized_tensor(img.resize((104, 64), Image.BICUBIC))
    assert torch.equal(pixels, ref)
    exact = _image(96, 48)
    assert torch.equal(native_resolution_image(exact, patch_size=8), to_normalized_tensor(exact))


def test_native_resolution_limits_and_pooling_unit():
    w, h = native_resolution_size(1920, 1080, 14, max_tokens=1024)
    assert w % 14 == 0 and h % 14 == 0
    assert (w // 14) * (h // 14) <= 1024
    assert abs((w / h) - 1920 / 1080) < 0.1
    w, h = native_resolution_size(1920, 1080, 14, max_side=448)
    assert max(w, h) <= 448 and w == 448
    w, h = native_resolution_size(1000, 300, 14, max_tokens=400, pool=2)
    assert w % 28 == 0 and h % 28 == 0 and (w // 14) * (h // 14) <= 400
    assert native_resolution_size(3, 3, 14) == (14, 14)  # at least one patch
    assert native_resolution_size(50, 50, 8, max_side=4000) == (48, 48)  # never upscaled
    with pytest.raises(ValueError, match="max_tokens"):
        native_resolution_size(100, 100, 14, max_tokens=3, pool=2)


# --- stitching --------------------------------------------------------------------------------------------


def _known_layout(gw: int, gh: int, h: int, w: int, c: int = 3) -> torch.Tensor:
    """A feature map whose value tells where it is: (channel, row, column) -> unique number."""
    return torch.arange(c * gh * h * gw * w, dtype=torch.float32).reshape(c, gh * h, gw * w)


def test_stitch_tiles_reassembles_a_known_layout_exactly():
    gw, gh, side, c = 3, 2, 4, 5
    full = _known_layout(gw, gh, side, side, c)
    maps = torch.stack(
        [full[:, r * side : (r + 1) * side, q * side : (q + 1) * side] for r in range(gh) for q in range(gw)]
    )  # row-major tiles, as tile_image cuts them
    tokens = maps.flatten(2).transpose(1, 2)  # (T, h*w, C), as a vision tower returns them
    assert torch.equal(stitch_tiles(tokens, (gw, gh)), full)
    assert torch.equal(stitch_tiles(maps, (gw, gh)), full)
    with_thumb = torch.cat([torch.full_like(tokens[:1], -1.0), tokens])
    assert torch.equal(stitch_tiles(with_thumb, (gw, gh)), full)  # thumbnail dropped
    with pytest.raises(ValueError, match="needs 6"):
        stitch_tiles(tokens[:4], (gw, gh))
    with pytest.raises(ValueError, match="square"):
        stitch_tiles(torch.zeros(6, 12, c), (gw, gh))


def test_stitched_pixels_equal_the_tiled_canvas():
    # stitching the tiles' pixels themselves gives back the resized canvas: layouts agree end to end
    img = _image(150, 70, seed=2)
    tiles, grid = tile_image(img, max_tiles=8, tile_size=32)
    canvas = to_normalized_tensor(img.resize((grid[0] * 32, grid[1] * 32), Image.BICUBIC))
    assert torch.equal(stitch_tiles(tiles, grid), canvas)

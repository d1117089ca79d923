"""Dense-feature tools: feature maps, PCA pictures, similarity heatmaps, correspondences, mask propagation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import randomize, tiny_clip_config, tiny_vision_config
from perception_encoder import dense
from perception_encoder.clip import CLIP
from perception_encoder.dense import pca, propagation, render, similarity
from perception_encoder.transforms import image_transform
from perception_encoder.vision import VisionTransformer


@pytest.fixture(scope="module")
def tower():
    return randomize(VisionTransformer(tiny_vision_config(image_size=64)))


@pytest.fixture(scope="module")
def clip_model():
    return randomize(CLIP(tiny_clip_config()))


def square_image(h=64, w=64, box=(16, 32, 20, 36), color=(250, 20, 20)) -> np.ndarray:
    """Green background, one coloured box (top, bottom, left, right)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = (30, 120, 30)
    top, bottom, left, right = box
    a[top:bottom, left:right] = color
    return a


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a & b).sum() / (a | b).sum()).item()


# --- feature maps --------------------------------------------------------------------------------------


def test_patch_features_match_the_tower(tower):
    img = square_image()
    feats = dense.patch_features(tower, img)
    assert feats.shape == (8, 8, 32) and feats.dtype == torch.float32
    pixels = image_transform(64)(Image.fromarray(img))[None]
    with torch.no_grad():
        tokens = tower.forward_features(pixels)[:, 1:]  # CLS dropped, row-major patches
        normed = tower.forward_features(pixels, layer=0, norm=True)[:, 1:]
    torch.testing.assert_close(feats.reshape(64, 32), tokens[0])
    torch.testing.assert_close(
        dense.patch_features(tower, img, layer=0, norm=True).reshape(64, 32), normed[0]
    )
    assert not torch.allclose(dense.patch_features(tower, img, layer=0), feats)


def test_patch_features_sizes_and_inputs(tower, clip_model, tmp_path):
    img = square_image()
    assert dense.patch_features(tower, img, image_size=(48, 32)).shape == (6, 4, 32)
    assert dense.patch_features(tower, img, image_size=50).shape == (6, 6, 32)  # rounded to whole patches
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    from_path = dense.patch_features(tower, path)
    torch.testing.assert_close(from_path, dense.patch_features(tower, Image.fromarray(img)))
    torch.testing.assert_close(from_path, dense.patch_features(tower, torch.from_numpy(img)))
    # a CLIP model means its vision tower
    torch.testing.assert_close(
        dense.patch_features(clip_model, img), dense.patch_features(clip_model.visual, img)
    )
    with pytest.raises(TypeError, match="vision tower"):
        dense.patch_features(torch.nn.Linear(2, 2), img)
    with pytest.raises(ValueError, match="smaller than one"):
        dense.patch_features(tower, img, image_size=4)
    with pytest.raises(IndexError, match="out of range"):
        dense.patch_features(tower, img, layer=5)


@pytest.mark.parametrize("ext", [".npy", ".safetensors"])
def test_save_and_load_features(tmp_path, ext):
    feats = torch.randn(3, 4, 5)
    path = dense.save_features(feats, tmp_path / "sub" / f"f{ext}")
    back = dense.load_features(path)
    assert back.dtype == np.float32 and back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, feats.numpy())
    dense.save_features(feats.numpy().astype(np.float64), path)
    np.testing.assert_allclose(dense.load_features(path), feats.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\.npy or \.safetensors"):
        dense.save_features(feats, tmp_path / "f.txt")


# --- PCA -----------------------------------------------------------------------------------------------


def structured_features(h=10, w=12, c=24, seed=0):
    """Features driven by two known fields (a strong one along rows, a weaker one along columns)."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.linalg.qr(torch.randn(c, 2, generator=g))[0].T  # orthonormal directions
    rows = torch.linspace(-1, 1, h)[:, None].expand(h, w)
    cols = torch.linspace(-1, 1, w)[None, :].expand(h, w)
    f = 3 * rows[..., None] * u + 1.5 * cols[..., None] * v + 0.01 * torch.randn(h, w, c, generator=g)
    return f, rows, cols


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


def test_pca_rgb_recovers_components():
    f, rows, cols = structured_features()
    rgb = dense.pca_rgb(f)
    assert rgb.shape == (10, 12, 3) and rgb.dtype == torch.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(rgb.amin((0, 1)), torch.zeros(3)) and torch.allclose(
        rgb.amax((0, 1)), torch.ones(3)
    )
    assert abs(corr(rgb[..., 0], rows)) > 0.999 and abs(corr(rgb[..., 1], cols)) > 0.999
    torch.testing.assert_close(dense.pca_rgb(f), rgb)  # deterministic
    assert dense.pca_rgb(f, n=1).shape == (10, 12, 1)
    # a batch is fitted jointly: the same axes for both images
    both = dense.pca_rgb(torch.stack([f, f]))
    torch.testing.assert_close(both[0], both[1])
    with pytest.raises(ValueError, match="components"):
        dense.pca_rgb(f, n=25)
    with pytest.raises(ValueError, match="H', W', C"):
        dense.pca_rgb(torch.randn(5, 4))


def test_pca_foreground():
    g = torch.Generator().manual_seed(1)
    c = 16
    bg, obj = torch.randn(c, generator=g), torch.randn(c, generator=g)
    f = bg + 0.2 * torch.randn(9, 9, c, generator=g)
    truth = torch.zeros(9, 9, dtype=torch.bool)
    truth[3:7, 2:6] = True
    f[truth] = obj + 0.2 * torch.randn(int(truth.sum()), c, generator=g)
    torch.testing.assert_close(dense.foreground_mask(f, 0.5), truth)
    torch.testing.assert_close(dense.foreground_mask(f, 0.5, invert=True), ~truth)
    rgb = dense.pca_rgb(f, foreground_threshold=0.5)
    assert (rgb[~truth] == 0).all()
    assert rgb[truth].amax(0).min() == 1 and rgb[truth].amin(0).max() == 0  # full range on the object


def test_pca_figure():
    img = Image.fromarray(square_image(40, 60))
    fig = dense.pca_figure(img, torch.rand(5, 6, 3), gap=4)
    assert fig.size == (124, 40)
    assert np.array_equal(np.asarray(fig)[:, :60], np.asarray(img))
    fig1 = dense.pca_figure(img, torch.rand(5, 6, 1))  # one component: colour-mapped
    assert fig1.size == (128, 40)


# --- similarity ----------------------------------------------------------------------------------------


def test_pixel_patch_mapping():
    # a 200 x 100 (W x H) picture on a 4 x 8 grid: patches are 25 px wide and 25 px tall
    assert similarity.pixel_to_patch((0, 0), (200, 100), (4, 8)) == (0, 0)
    assert similarity.pixel_to_patch((199.9, 99.9), (200, 100), (4, 8)) == (3, 7)
    assert similarity.pixel_to_patch((60, 30), (200, 100), (4, 8)) == (1, 2)
    x, y = similarity.patch_center(1, 2, (200, 100), (4, 8))
    assert (float(x), float(y)) == (62.5, 37.5)
    with pytest.raises(ValueError, match="outside"):
        similarity.pixel_to_patch((200, 5), (200, 100), (4, 8))


def test_point_similarity(tower):
    img = square_image()
    sim, (row, col) = dense.point_similarity(tower, img, (24, 20))
    assert sim.shape == (8, 8) and (row, col) == (2, 3)
    assert sim[row, col] == pytest.approx(1.0, abs=1e-5) and sim.max() <= 1 + 1e-5
    feats = dense.patch_features(tower, img)
    expected = F.cosine_similarity(feats, feats[row, col].expand_as(feats), dim=-1)
    torch.testing.assert_close(sim, expected, atol=1e-5, rtol=1e-5)
    # patches of the red box are closer to the query (inside it) than the green background on average
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:4, 3:4] = True
    assert sim[inside].mean() > sim[~inside].mean()


def test_clip_patch_embeddings_is_exact_for_a_single_token():
    # with one patch and no CLS token the pooler can only attend to that token: the dense reading of the
    # head must then equal the pooled image embedding exactly
    model = randomize(CLIP(tiny_clip_config(image_size=8, use_cls_token=False)))
    pixels = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        pooled = model.encode_image(pixels)
    dense_emb = dense.clip_patch_embeddings(model, pixels)
    assert dense_emb.shape == (2, 1, 1, 16)
    torch.testing.assert_close(dense_emb[:, 0, 0], pooled, atol=1e-5, rtol=1e-5)
    linear = dense.clip_patch_embeddings(model, pixels, mode="linear")
    assert not torch.allclose(linear, dense_emb)


def test_text_similarity(clip_model, tower):
    img = square_image(32, 32, box=(8, 16, 8, 16))
    tok = torch.zeros(1, 16, dtype=torch.long)
    tok[0, :3] = torch.tensor([49406, 320, 49407])
    sim = dense.text_similarity(clip_model, img, tok)
    assert sim.shape == (4, 4) and sim.abs().max() <= 1
    pixels = image_transform(32)(Image.fromarray(img))[None]
    with torch.no_grad():
        txt = clip_model.encode_text(tok, normalize=True)[0]
    patches = dense.clip_patch_embeddings(clip_model, pixels)[0]
    torch.testing.assert_close(sim, F.normalize(patches, dim=-1) @ txt, atol=1e-5, rtol=1e-5)
    # a prompt goes through the CLIP tokenizer
    words = dense.text_similarity(clip_model, img, "a red square", mode="linear")
    assert words.shape == (4, 4) and not torch.allclose(words, sim)
    with pytest.raises(TypeError, match="CLIP"):
        dense.text_similarity(tower, img, "x")
    with pytest.raises(ValueError, match="empty"):
        dense.text_similarity(clip_model, img, "  ")


def test_similarity_figure():
    img = Image.fromarray(square_image(30, 40))
    fig = dense.similarity_figure(img, torch.rand(3, 4), point=(10, 10), gap=2)
    assert fig.size == (82, 30)
    left = np.asarray(fig)[:, :40]
    red = (left == (255, 0, 0)).all(-1)
    ys, xs = np.nonzero(red)
    assert len(ys) > 10 and np.abs(ys - 10).max() <= 6 and np.abs(xs - 10).max() <= 6  # the ring at the point


# --- correspondences -----------------------------------------------------------------------------------


def test_mutual_nearest_neighbors_on_shifted_features():
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(5, 6, 32, generator=g)
    f2 = torch.randn(5, 6, 32, generator=g)
    f2[:, 1:] = f1[:, :-1] + 0.05 * torch.randn(5, 5, 32, generator=g)  # image 2 = image 1 moved right
    idx1, idx2, scores = dense.mutual_nearest_neighbors(f1, f2)
    pairs = {(int(a), int(b)) for a, b in zip(idx1, idx2, strict=True)}
    expected = {(r * 6 + c, r * 6 + c + 1) for r in range(5) for c in range(5)}
    assert expected <= pairs and len(pairs - expected) <= 2
    assert (scores[:-1] >= scores[1:]).all()  # best first
    top = dense.mutual_nearest_neighbors(f1, f2, topk=7)
    assert len(top[0]) == 7 and torch.equal(top[2], scores[:7])
    one_way = dense.mutual_nearest_neighbors(f1, f2, mutual=False)
    assert len(one_way[0]) == 30
    with pytest.raises(ValueError, match="same C"):
        dense.mutual_nearest_neighbors(f1, torch.randn(5, 6, 8))


def test_match_images_same_image_is_identity(tower):
    img = square_image(48, 64)  # squashed to 64 x 64 -> 8 x 8 patches of 8 x 6 original pixels
    m = dense.match_images(tower, img, img, topk=None)
    assert len(m) == 64
    np.testing.assert_array_equal(m.patches1, m.patches2)
    np.testing.assert_allclose(m.points1, m.points2)
    np.testing.assert_allclose(m.scores, 1.0, atol=1e-5)
    r, c = m.patches1[0]
    np.testing.assert_allclose(m.points1[0], [(c + 0.5) * 8, (r + 0.5) * 6])
    fig = dense.correspondence_figure(Image.fromarray(img), Image.fromarray(img), m, gap=10)
    assert fig.size == (138, 48)
    assert len(dense.match_images(tower, img, img, topk=5)) == 5


# --- mask propagation ----------------------------------------------------------------------------------


def test_neighborhood_mask():
    near = propagation.neighborhood_mask(4, 5, 1)
    assert near.shape == (20, 20)
    assert near[0].sum() == 4 and near[6].sum() == 9  # a corner and an interior patch
    assert near[0, 6] and not near[0, 2] and not near[0, 10]
    assert propagation.neighborhood_mask(3, 3, 0).equal(torch.eye(9, dtype=torch.bool))


def moving_object_features(n_frames=8, h=12, w=14, c=32, size=3, step=1, seed=0):
    """A static background (a shared direction plus per-position texture) and an object of its own
    feature moving right by ``step`` patches per frame. Returns features (N, h, w, c) and truth (N, h, w)."""
    g = torch.Generator().manual_seed(seed)
    bg_dir, obj_dir = torch.randn(c, generator=g), torch.randn(c, generator=g)
    background = bg_dir + 0.6 * torch.randn(h, w, c, generator=g)
    feats, truth = [], []
    for t in range(n_frames):
        f = background + 0.1 * torch.randn(h, w, c, generator=g)
        m = torch.zeros(h, w, dtype=torch.bool)
        m[4 : 4 + size, 1 + step * t : 1 + step * t + size] = True
        f[m] = obj_dir + 0.3 * torch.randn(int(m.sum()), c, generator=g)
        feats.append(f)
        truth.append(m)
    return torch.stack(feats), torch.stack(truth)


def test_propagate_labels_follows_a_moving_object():
    feats, truth = moving_object_features()
    first = F.one_hot(truth[0].long(), 2).float()  # (h, w, 2)
    out = list(dense.propagate_labels(feats, first, topk=5, temperature=0.1, context_frames=3, radius=3))
    assert len(out) == 8 and all(o.shape == (12, 14, 2) for o in out)
    torch.testing.assert_close(out[0], first)
    for o in out:
        torch.testing.assert_close(o.sum(-1), torch.ones(12, 14))  # label distributions
    for t in range(1, 8):
        assert iou(out[t].argmax(-1).bool(), truth[t]) > 0.8, t
    # the object has moved 7 patches: a window of radius 0 can only look at the same place, so it fails
    stuck = list(dense.propagate_labels(feats, first, radius=0, context_frames=0))
    assert iou(stuck[-1].argmax(-1).bool(), truth[-1]) < 0.2
    # an iterable of frames is consumed lazily and gives the same result
    lazy = list(dense.propagate_labels(iter(feats), first, context_frames=3, radius=3))
    torch.testing.assert_close(torch.stack(lazy), torch.stack(out))


def test_propagate_labels_checks_inputs():
    feats, truth = moving_object_features(n_frames=2)
    first = F.one_hot(truth[0].long(), 2).float()
    with pytest.raises(ValueError, match="share the grid"):
        next(dense.propagate_labels(feats, first[:5]))
    with pytest.raises(ValueError, match="frame 1"):
        list(dense.propagate_labels([feats[0], feats[1, :5]], first))
    with pytest.raises(ValueError, match="temperature"):
        next(dense.propagate_labels(feats, first, temperature=0))


def moving_square_frames(n=6, h=64, w=64, step=4):
    frames = torch.zeros(n, h, w, 3, dtype=torch.uint8)
    frames[..., 1] = 120
    truth = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        x = 8 + step * i
        frames[i, 16:36, x : x + 20] = torch.tensor([250, 20, 20], dtype=torch.uint8)
        truth[i, 16:36, x : x + 20] = True
    return frames, truth


def test_propagate_masks_end_to_end(tower, tmp_path):
    frames, truth = moving_square_frames()
    masks = dense.propagate_masks(tower, frames, truth[0].numpy(), batch_size=4)
    assert masks.shape == (6, 64, 64) and masks.dtype == torch.bool
    assert torch.equal(masks[0], truth[0])
    assert min(iou(masks[t], truth[t]) for t in range(1, 6)) > 0.6
    # object ids and dtype are kept: 0 background, 7 the square
    ids = np.where(truth[0].numpy(), 7, 0).astype(np.uint8)
    labelled = dense.propagate_masks(tower, frames, Image.fromarray(ids, mode="L"))
    assert labelled.dtype == torch.uint8 and set(labelled.unique().tolist()) == {0, 7}
    assert torch.equal(labelled == 7, masks)
    # a folder of frames gives the same masks
    for i, f in enumerate(frames):
        Image.fromarray(f.numpy()).save(tmp_path / f"{i:05d}.png")
    assert torch.equal(dense.propagate_masks(tower, tmp_path, truth[0].numpy()), masks)


def test_propagate_masks_from_video_file(tower, tmp_path):
    av = pytest.importorskip("av")
    frames, truth = moving_square_frames(n=5)
    path = tmp_path / "square.mkv"
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=5)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    for f in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(f.numpy(), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    masks = dense.propagate_masks(tower, str(path), truth[0])
    assert masks.shape == (5, 64, 64)
    assert min(iou(masks[t], truth[t]) for t in range(1, 5)) > 0.5


def test_propagate_masks_errors(tower):
    frames, truth = moving_square_frames(n=2)
    with pytest.raises(ValueError, match="mask is 32x64"):
        dense.propagate_masks(tower, frames, truth[0, :32])
    with pytest.raises(ValueError, match="label image"):
        dense.propagate_masks(tower, frames, Image.new("RGB", (64, 64)))
    with pytest.raises(TypeError, match="integer or bool"):
        dense.propagate_masks(tower, frames, truth[0].float())
    with pytest.raises(ValueError, match="no frames"):
        dense.propagate_masks(tower, [], truth[0])


# --- pictures ------------------------------------------------------------------------------------------


def test_render_helpers(tmp_path):
    cm = render.colorize(np.array([[0.0, 1.0, 0.5]]))
    assert tuple(cm[0, 0]) == (68, 1, 84) and tuple(cm[0, 1]) == (253, 231, 37)
    np.testing.assert_allclose(render.rescale(np.array([2.0, 4.0, 3.0])), [0, 1, 0.5])
    np.testing.assert_allclose(render.rescale(np.ones(3)), 0.5)
    img = render.map_to_image(np.array([[0.0, 1.0]]), (4, 2))
    assert img.size == (4, 2) and tuple(np.asarray(img)[0, 0]) == (68, 1, 84)
    with pytest.raises(ValueError, match=".png"):
        render.save_png(img, tmp_path / "x.jpg")
    out = render.save_png(img, tmp_path / "a" / "x.png")
    assert Image.open(out).size == (4, 2)
    assert pca.principal_components(torch.randn(50, 4).double(), 2).shape == (50, 2)

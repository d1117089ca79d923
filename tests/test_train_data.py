"""Training data: folder, CSV, Parquet and tar-shard sources, bad samples skipped and counted, batch order,
augmentation determinism and masking."""

from __future__ import annotations

import csv
import random

import pytest
import torch
from PIL import Image

from perception_encoder.train.augment import TrainTransform, random_resized_crop_box, swap_left_right
from perception_encoder.train.config import AugmentConfig, DataConfig
from perception_encoder.train.data import (
    BadSample,
    BadSampleError,
    Collator,
    EpochBatches,
    FolderSource,
    SampleKey,
    TableSource,
    TarSource,
    TrainingDataset,
    detect_kind,
    epoch_permutation,
    expand_shards,
    image_bytes,
    open_source,
    write_tar_shard,
)
from perception_encoder.train.masking import mask_patches, masked_slots
from perception_encoder.train.synthetic import ShapesGenerator


def _image(i: int, size: int = 24) -> Image.Image:
    return ShapesGenerator(seed=5, image_size=size).sample(i).image


def _collect(dataset: TrainingDataset, n: int):
    return [dataset[SampleKey(i, f"s{i}", 16, i)] for i in range(n)]


@pytest.fixture
def folder(tmp_path):
    """4 good images with captions, one without a caption, one corrupt file with a caption."""
    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        _image(i).save(root / ("sub" if i % 2 else ".") / f"img{i}.png")
        (root / ("sub" if i % 2 else ".") / f"img{i}.txt").write_text(f"caption {i}\n")
    _image(9).save(root / "nocaption.png")
    (root / "broken.png").write_bytes(b"not an image at all")
    (root / "broken.txt").write_text("a broken image")
    return root


def test_folder_source_and_bad_samples(folder):
    src = FolderSource(folder)
    assert len(src) == 6
    ds = TrainingDataset(src, TrainTransform(AugmentConfig(enabled=False)))
    items = _collect(ds, len(src))
    bad = [it for it in items if isinstance(it, BadSample)]
    good = [it for it in items if not isinstance(it, BadSample)]
    assert len(good) == 4 and len(bad) == 2
    reasons = " ".join(b.reason for b in bad)
    assert "no caption file nocaption.txt" in reasons and "broken.png" in reasons
    assert {g[1] for g in good} == {f"caption {i}" for i in range(4)}
    assert all(g[0].shape == (3, 16, 16) for g in good)
    batch = Collator(lambda texts: torch.ones(len(texts), 5, dtype=torch.long))(items)
    assert len(batch) == 4 and len(batch.bad) == 2 and batch.pixels.shape == (4, 3, 16, 16)
    assert batch.token_ids.shape == (4, 5)


def test_csv_and_parquet_sources(tmp_path):
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(3):
        _image(i).save(tmp_path / "imgs" / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "text": f"a caption {i}"})
    rows.append({"image": "imgs/missing.png", "text": "gone"})
    rows.append({"image": "imgs/0.png", "text": "   "})
    with (tmp_path / "pairs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "text"])
        w.writeheader()
        w.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    for name in ("pairs.csv", "pairs.parquet"):
        src = open_source(DataConfig(source=str(tmp_path / name)))
        assert isinstance(src, TableSource) and len(src) == 5
        assert src.load(1).caption == "a caption 1"
        with pytest.raises(BadSampleError, match="no such file"):
            src.load(3)
        with pytest.raises(BadSampleError, match="empty caption"):
            src.load(4)
    with pytest.raises(ValueError, match="no caption column 'nope'"):
        TableSource(tmp_path / "pairs.csv", caption_column="nope")


def test_tar_shards_group_members_by_key(tmp_path):
    good = [
        (f"part/{i:04d}", {"png": image_bytes(_image(i)), "txt": f"shape {i}".encode()}) for i in range(3)
    ]
    json_caption = [
        ("part/0100", {"jpg": image_bytes(_image(7), "JPEG"), "json": b'{"caption": "from json"}'})
    ]
    bad = [
        ("part/0200", {"png": b"garbage bytes"}),  # no caption and a corrupt image
        ("part/0201", {"png": b"garbage bytes", "txt": b"caption of a corrupt image"}),
        ("part/0202", {"txt": b"a caption without an image"}),
    ]
    write_tar_shard(tmp_path / "shard-000.tar", good + json_caption)
    write_tar_shard(tmp_path / "shard-001.tar", bad)
    assert [p.name for p in expand_shards(str(tmp_path / "shard-{000..001}.tar"))] == [
        "shard-000.tar",
        "shard-001.tar",
    ]
    assert len(expand_shards(str(tmp_path / "shard-*.tar"))) == 2
    src = open_source(DataConfig(source=str(tmp_path / "shard-{000..001}.tar")))
    assert isinstance(src, TarSource) and len(src) == 7
    captions = [src.load(i).caption for i in range(4)]
    assert captions == ["shape 0", "shape 1", "shape 2", "from json"]
    assert src.load(0).image.size == (24, 24)
    for i, reason in zip(
        range(4, 7), ("no caption member", "cannot read image", "no image member"), strict=True
    ):
        with pytest.raises(BadSampleError, match=reason):
            src.load(i)
    # a source survives pickling (loader workers) and reads after it
    import pickle

    assert pickle.loads(pickle.dumps(src)).load(2).caption == "shape 2"
    with pytest.raises(FileNotFoundError):
        expand_shards(str(tmp_path / "nothing-*.tar"))


def test_truncated_shard_keeps_what_was_indexed(tmp_path):
    shard = write_tar_shard(
        tmp_path / "s.tar", [(f"{i}", {"png": image_bytes(_image(i)), "txt": b"x"}) for i in range(4)]
    )
    import tarfile

    with tarfile.open(shard) as tf:
        third = tf.getmember("2.png")
    data = shard.read_bytes()
    shard.write_bytes(data[: third.offset_data + 100])  # cut inside the third image's data
    src = TarSource(str(shard))
    assert src.index_errors and "s.tar" in src.index_errors[0]
    assert 2 <= len(src) < 4
    assert src.load(0).caption == "x" and src.load(1).caption == "x"
    with pytest.raises(BadSampleError):
        src.load(len(src) - 1)


def test_detect_kind(tmp_path):
    assert detect_kind("synthetic") == detect_kind("synthetic:100") == "synthetic"
    assert detect_kind(str(tmp_path)) == "folder"
    assert detect_kind("a/b.csv") == "csv" and detect_kind("x.tsv") == "csv"
    assert detect_kind("x.parquet") == "parquet" and detect_kind("s-{0..3}.tar") == "tar"
    with pytest.raises(ValueError, match="cannot tell"):
        detect_kind("data.xyz")
    with pytest.raises(ValueError, match="synthetic"):
        open_source(DataConfig(source="synthetic:many"))


def test_epoch_batches_cover_each_epoch_once_and_resume_mid_epoch():
    n, gb = 20, 4
    full = list(EpochBatches(n, gb, seed=1, epoch=0, start=0, first_micro=0, size_of=lambda m: 32))
    assert len(full) == 5
    assert sorted(k.index for b in full for k in b) == list(range(20))
    assert [k.index for k in full[0]] == epoch_permutation(n, 1, 0)[:4].tolist()
    resumed = list(EpochBatches(n, gb, seed=1, epoch=0, start=8, first_micro=2, size_of=lambda m: 32))
    assert resumed == full[2:]
    other_epoch = list(EpochBatches(n, gb, seed=1, epoch=1, start=0, first_micro=0, size_of=lambda m: 32))
    assert [k.index for k in other_epoch[0]] != [k.index for k in full[0]]
    # two ranks split each global batch into halves; sizes follow the micro-batch counter
    r0, r1 = (
        list(
            EpochBatches(
                n,
                gb,
                seed=1,
                epoch=0,
                start=0,
                first_micro=0,
                size_of=lambda m: 16 * (1 + m),
                rank=rank,
                world_size=2,
            )
        )
        for rank in (0, 1)
    )
    assert [k.index for k in r0[0] + r1[0]] == [k.index for k in full[0]]
    assert [k.slot for k in r1[0]] == [2, 3] and [b[0].size for b in r0] == [16, 32, 48, 64, 80]
    with pytest.raises(ValueError, match="divisible"):
        EpochBatches(n, 3, seed=0, epoch=0, start=0, first_micro=0, size_of=lambda m: 8, world_size=2)


def test_augmentation_is_seeded_and_flip_swaps_captions():
    img = _image(3, 48)
    tf = TrainTransform(AugmentConfig(flip=0.5))
    a = tf(img, "a star on the left", 32, "seed-1")
    b = tf(img, "a star on the left", 32, "seed-1")
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[0].shape == (3, 32, 32)
    outs = [tf(img, "a star on the left", 32, f"seed-{i}") for i in range(20)]
    assert len({o[1] for o in outs}) == 2  # flipped and not
    assert not torch.equal(outs[0][0], outs[1][0])
    flipped = TrainTransform(
        AugmentConfig(flip=1.0, color_jitter=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    )
    plain = TrainTransform(
        AugmentConfig(flip=0.0, color_jitter=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    )
    x_f, cap_f = flipped(img, "Left of the sun, right there", 48, 0)
    x_p, cap_p = plain(img, "Left of the sun, right there", 48, 0)
    assert cap_f == "Right of the sun, left there" and cap_p == "Left of the sun, right there"
    torch.testing.assert_close(x_f, x_p.flip(-1))
    keep = TrainTransform(AugmentConfig(flip=1.0, flip_swap_left_right=False))
    assert keep(img, "on the left", 32, 0)[1] == "on the left"
    assert swap_left_right("LEFT leftmost bright") == "RIGHT rightmost bright"


def test_augmentation_off_is_the_inference_transform():
    from perception_encoder.transforms import image_transform

    img = _image(1, 40)
    x, cap = TrainTransform(AugmentConfig(enabled=False))(img, "c", 32, 0)
    assert torch.equal(x, image_transform(32)(img)) and cap == "c"


def test_clip_augmentation_shares_parameters_across_frames():
    frames = [_image(2, 40)] * 3
    x, _ = TrainTransform(AugmentConfig()).clip(frames, "c", 24, 7)
    assert x.shape == (3, 3, 24, 24)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_random_resized_crop_box_respects_scale():
    rng = random.Random(0)
    for _ in range(50):
        left, top, right, bottom = random_resized_crop_box(100, 60, (0.5, 0.9), (0.75, 1.33), rng)
        area = (right - left) * (bottom - top)
        assert 0 <= left < right <= 100 and 0 <= top < bottom <= 60
        assert 0.4 * 6000 <= area <= 0.95 * 6000


def test_masking_choices_and_patches():
    slots = masked_slots(64, 1 / 16, seed=0, step=3, micro=0)
    assert len(slots) == 4 and slots == masked_slots(64, 1 / 16, seed=0, step=3, micro=0)
    assert slots != masked_slots(64, 1 / 16, seed=0, step=4, micro=0)
    assert masked_slots(8, 1 / 16, 0, 0, 0) and not masked_slots(8, 0.0, 0, 0, 0)
    x = torch.randn(2, 3, 36, 32)  # 4 x 4 patches of 8 px; 4 rows of pixels beyond the last patch
    y = mask_patches(x, 8, 0.5, ["a", "b"])
    patches = y[:, :, :32].unfold(2, 8, 8).unfold(3, 8, 8)  # (2, 3, 4, 4, 8, 8)
    zero = (patches == 0).flatten(-2).all(-1).all(1)  # (2, 4, 4) masked patches
    assert zero.sum(dim=(1, 2)).tolist() == [8, 8]
    assert not torch.equal(zero[0], zero[1])
    kept = ~zero
    orig = x[:, :, :32].unfold(2, 8, 8).unfold(3, 8, 8)
    assert torch.equal(patches.permute(0, 2, 3, 1, 4, 5)[kept], orig.permute(0, 2, 3, 1, 4, 5)[kept])
    assert torch.equal(y[:, :, 32:], x[:, :, 32:])
    assert torch.equal(mask_patches(x, 8, 0.5, ["a", "b"]), y)
    clips = torch.randn(1, 2, 3, 16, 16)
    yc = mask_patches(clips, 8, 0.5, ["c"])
    assert torch.equal(yc[:, 0] == 0, yc[:, 1] == 0)  # one mask for every frame of a clip


def test_video_file_rows_give_clips(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(6):
            frame = av.VideoFrame.from_image(_image(i, 32))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    (tmp_path / "clips.csv").write_text("video,caption\nclip.mp4,shapes moving\nbroken.mp4,nothing\n")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    src = open_source(DataConfig(source=str(tmp_path / "clips.csv"), frames=3))
    clip = src.load(0)
    assert len(clip.image) == 3 and clip.image[0].size == (32, 32) and clip.caption == "shapes moving"
    with pytest.raises(BadSampleError, match="broken.mp4"):
        src.load(1)
    ds = TrainingDataset(src, TrainTransform(AugmentConfig()), video=True)
    pixels, caption, slot = ds[SampleKey(0, "k", 16, 3)]
    assert pixels.shape == (3, 3, 16, 16) and slot == 3
    assert isinstance(ds[SampleKey(1, "k", 16, 0)], BadSample)

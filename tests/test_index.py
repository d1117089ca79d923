"""pe index / pe search / pe dedup and their Python API (perception_encoder.index) on small datasets written
with the dataset writer's own functions (write_shard + write_manifest)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lancedb")
pa = pytest.importorskip("pyarrow")

from click.testing import CliRunner  # noqa: E402

from perception_encoder.cli.main import main  # noqa: E402
from perception_encoder.datasets import open_dataset  # noqa: E402
from perception_encoder.datasets.items import InputItem  # noqa: E402
from perception_encoder.datasets.manifest import Manifest, Settings, ShardRecord, write_manifest  # noqa: E402
from perception_encoder.datasets.shards import ids_fingerprint, row_schema, write_shard  # noqa: E402
from perception_encoder.index import (  # noqa: E402
    StaleIndexError,
    VectorIndexError,
    build_index,
    dedup,
    duplicate_rows,
    open_index,
    search,
)

CAPTIONS = ("a cat", "a dog", "a red car")
METADATA = [pa.field("caption", pa.string()), pa.field("width", pa.int64())]


# --- datasets ---------------------------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int = 64, clusters: int = 30, seed: int = 0) -> np.ndarray:
    """``(n, dim)`` unit vectors around ``clusters`` centres, spread in a low-rank subspace (like real
    embeddings: not uniform on the sphere, so nearest neighbours mean something)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, dim)))
    basis = np.linalg.qr(rng.standard_normal((dim, 8)))[0].T
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, 8)) @ basis / np.sqrt(8)
    return unit(x + 0.1 * rng.standard_normal((n, dim)) / np.sqrt(dim))


def test_settings(dim: int, storage: str = "float32", **overrides) -> Settings:
    base = dict(
        model="test-model",
        checkpoint=None,
        checkpoint_sha256="0" * 64,
        dtype="fp32",
        pool="pooled",
        layer=None,
        normalize=True,
        frames=8,
        image_size=(32, 32),
        resize="squash",
        high_bit_depth="clip",
        storage=storage,
        dim=dim,
        shard_size=1000,
        inputs=("inputs/",),
    )
    base.update(overrides)
    return Settings(**base)


test_settings.__test__ = False  # a helper, not a test


def items(start: int, stop: int, ids: list[str] | None = None) -> list[InputItem]:
    """Inputs ``start .. stop - 1`` with a caption (string) and a width (int) column."""
    return [
        InputItem(
            position=i,
            id=ids[i] if ids else f"img{i:05d}.jpg",
            source="inputs/",
            kind="file",
            ref=f"inputs/img{i:05d}.jpg",
            metadata=(("caption", CAPTIONS[i % 3]), ("width", 100 + 10 * (i % 7))),
        )
        for i in range(start, stop)
    ]


def add_shard(root: Path, manifest: Manifest, vectors: np.ndarray, start: int, ids=None) -> None:
    """Write the rows ``start .. start + len(vectors) - 1`` as the next shard, and the manifest after it."""
    s = manifest.settings
    rows = items(start, start + len(vectors), ids)
    record = ShardRecord(
        index=len(manifest.shards),
        first=start,
        inputs=len(rows),
        rows=len(rows),
        skipped=0,
        ids_sha256=ids_fingerprint(rows),
    )
    write_shard(root, record, rows, vectors, [], row_schema(s.dim, s.storage, METADATA))
    manifest.shards.append(record)
    write_manifest(root, manifest)


def make_dataset(root: Path, vectors: np.ndarray, shard_size: int = 1000, storage: str = "float32", ids=None):
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(settings=test_settings(vectors.shape[1], storage, shard_size=shard_size))
    for start in range(0, len(vectors), shard_size):
        add_shard(root, manifest, vectors[start : start + shard_size], start, ids)
    if not len(vectors):
        write_manifest(root, manifest)
    return open_dataset(root), manifest


def brute_force(ds, queries: np.ndarray, k: int, mask: np.ndarray | None = None):
    """Rows and cosine scores of the ``k`` best rows per query, by NumPy over ``ds.embeddings()``."""
    e = unit(ds.embeddings())
    sims = unit(queries) @ e.T
    if mask is not None:
        sims[:, ~mask] = -np.inf
    best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    best = [b[np.isfinite(sims[i, b])] for i, b in enumerate(best)]
    return best, [sims[i, b] for i, b in enumerate(best)]


def union_find_groups(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """The reference: every pair with cosine >= threshold, joined by a plain union-find."""
    e = unit(vectors)
    parent = list(range(len(e)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(e @ e.T >= threshold - 1e-6, 1)), strict=True):
        parent[max(find(i), find(j))] = min(find(i), find(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(e)):
        groups.setdefault(find(i), []).append(i)
    return sorted(g for g in groups.values() if len(g) > 1)


SAMPLE = clustered(3200)  # rows and queries from one distribution: queries land among the rows


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return SAMPLE[:3000]


def queries(n: int, first: int = 0) -> np.ndarray:
    """``n`` query vectors near the rows but not among them."""
    return SAMPLE[3000 + first : 3000 + first + n]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, vectors):
    """A 3000-row dataset in 3 shards with an exact (flat) index."""
    ds, _ = make_dataset(tmp_path_factory.mktemp("flat") / "ds", vectors)
    info = build_index(ds)
    assert info.ann is None and info.rows == 3000
    return ds


@pytest.fixture(scope="module")
def ann_indexed(tmp_path_factory, vectors):
    """The same rows with an ANN index, forced by lowering the threshold."""
    ds, _ = make_dataset(tmp_path_factory.mktemp("ann") / "ds", vectors)
    info = build_index(ds, ann_min_rows=1000)
    assert info.ann is not None and info.ann["type"] == "IVF_HNSW_SQ"
    return ds


# --- search -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_exact_search_equals_brute_force(tmp_path, vectors, storage):
    ds, _ = make_dataset(tmp_path / "ds", vectors[:2500], shard_size=700, storage=storage)
    build_index(ds)
    q = queries(8)
    hits = search(ds, q, k=10)
    rows, scores = brute_force(ds, q, 10)
    ids = ds.ids()
    assert len(hits) == 8
    for h, r, s in zip(hits, rows, scores, strict=True):
        assert h.rows.tolist() == r.tolist()
        assert h.ids == [ids[i] for i in r]
        np.testing.assert_allclose(h.scores, s, atol=1e-5)
        assert np.all(np.diff(h.scores) <= 1e-6)  # best first
    record = hits[0].records()[0]
    assert record["rank"] == 1 and record["id"] == ids[rows[0][0]]
    assert set(record["metadata"]) == {"caption", "width"}


def test_exact_flag_bypasses_the_ann_index(ann_indexed):
    q = queries(6, 10)
    rows, scores = brute_force(ann_indexed, q, 10)
    for h, r, s in zip(search(ann_indexed, q, k=10, exact=True), rows, scores, strict=True):
        assert h.rows.tolist() == r.tolist()
        np.testing.assert_allclose(h.scores, s, atol=1e-5)


def test_ann_recall_at_10(ann_indexed):
    index = open_index(ann_indexed)
    assert index.has_ann
    approx = index.search(queries(200), k=10)
    exact = index.search(queries(200), k=10, exact=True)
    recall = np.mean([len(set(a.rows) & set(e.rows)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95, recall
    for a, e in zip(approx, exact, strict=True):  # re-ranked with the float32 vectors: exact scores
        truth = dict(zip(e.rows.tolist(), e.scores.tolist(), strict=True))
        for row, score in zip(a.rows.tolist(), a.scores.tolist(), strict=True):
            assert row not in truth or abs(truth[row] - score) < 1e-5


def test_a_query_row_finds_itself_first(ann_indexed, vectors):
    hits = search(ann_indexed, vectors[[5, 1234, 2999]], k=3)
    assert [h.rows[0] for h in hits] == [5, 1234, 2999]
    assert all(h.scores[0] == pytest.approx(1.0, abs=1e-4) for h in hits)


@pytest.mark.parametrize("fixture", ["indexed", "ann_indexed"])
@pytest.mark.parametrize(
    "where, keep",
    [
        ("caption = 'a red car'", lambda i: i % 3 == 2),
        ("width >= 150", lambda i: 100 + 10 * (i % 7) >= 150),
        ("caption LIKE '%dog' AND width < 120", lambda i: i % 3 == 1 and 100 + 10 * (i % 7) < 120),
    ],
)
def test_where_filters_metadata(request, fixture, where, keep):
    ds = request.getfixturevalue(fixture)
    q = queries(5, 20)
    mask = np.array([keep(i) for i in range(len(ds))])
    rows, _ = brute_force(ds, q, 10, mask)
    hits = search(ds, q, k=10, where=where)
    for h, r in zip(hits, rows, strict=True):
        assert len(h) == 10 and all(mask[h.rows])
        if fixture == "indexed":
            assert h.rows.tolist() == r.tolist()
        else:  # the ANN index: most of the exact filtered answer
            assert len(set(h.rows) & set(r)) >= 8


@pytest.mark.parametrize(
    "where, says",
    [
        ("widht > 3", "No field named widht"),
        ("width > 'wide'", "width > 'wide'"),
        ("caption = = 'x'", "caption = = 'x'"),
        ("width", "does not return a boolean"),
        ("width > 3; DROP TABLE rows", "not one SQL condition"),
        ("   ", "not one SQL condition"),
    ],
)
def test_a_bad_filter_is_one_clear_error(indexed, where, says):
    with pytest.raises(VectorIndexError) as exc:
        search(indexed, queries(1), where=where)
    message = str(exc.value)
    assert repr(where) in message and says in message and "\n" not in message
    assert "filter on: id, source, caption, width" in message


def test_query_shapes_are_checked(indexed):
    with pytest.raises(ValueError, match=r"\(Q, 64\)"):
        search(indexed, np.ones((2, 63), np.float32))
    with pytest.raises(ValueError, match="zero vector"):
        search(indexed, np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        search(indexed, np.ones(64, np.float32), k=0)
    assert len(search(indexed, np.ones(64, np.float32), k=4)[0]) == 4  # one (D,) query


def test_no_index_says_to_run_pe_index(tmp_path, vectors):
    ds, _ = make_dataset(tmp_path / "ds", vectors[:100])
    with pytest.raises(VectorIndexError, match=r"has no index: run `pe index"):
        search(ds, vectors[:1])


def test_an_empty_dataset_indexes_and_finds_nothing(tmp_path):
    ds, _ = make_dataset(tmp_path / "ds", np.empty((0, 8), np.float32))
    assert build_index(ds).rows == 0
    assert len(search(ds, np.ones((2, 8), np.float32))[1]) == 0
    assert dedup(ds, 0.9) == []
    with pytest.raises(VectorIndexError, match="at least 256"):
        build_index(ds, ann=True)


# --- staleness and rebuilding -----------------------------------------------------------------------------


def test_a_dataset_grown_since_the_index_is_stale(tmp_path, vectors):
    root = tmp_path / "ds"
    ds, manifest = make_dataset(root, vectors[:1000], shard_size=500)
    build_index(ds)
    add_shard(root, manifest, vectors[1000:1500], 1000)  # `pe embed` resumed and wrote another shard
    with pytest.raises(
        StaleIndexError, match=r"stale: it holds 1,000 rows.*now has 1,500 rows.*rerun `pe index"
    ):
        search(root, vectors[:1])
    result = CliRunner().invoke(main, ["search", str(root), "a cat"])
    assert result.exit_code == 1 and "rerun `pe index" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert build_index(root).rows == 1500
    assert search(root, vectors[1400:1401], k=1)[0].rows.tolist() == [1400]


def test_a_failed_rebuild_keeps_the_old_index(tmp_path, vectors, monkeypatch):
    from perception_encoder.index import build as build_module

    ds, _ = make_dataset(tmp_path / "ds", vectors[:1000])
    build_index(ds)

    def broken(table, rows):
        raise RuntimeError("training failed")

    monkeypatch.setattr(build_module, "_train_ann", broken)
    with pytest.raises(RuntimeError, match="training failed"):
        build_index(ds, ann=True)
    assert not list(ds.root.glob(".index-*"))  # no temporary folder left
    index = open_index(ds)
    assert not index.has_ann and index.search(vectors[7:8], k=1)[0].rows.tolist() == [7]


def test_a_rebuild_replaces_the_index(tmp_path, vectors):
    ds, _ = make_dataset(tmp_path / "ds", vectors[:1000])
    build_index(ds)
    assert not open_index(ds).has_ann
    build_index(ds, ann=True)
    assert open_index(ds).has_ann
    assert sorted(p.name for p in ds.root.iterdir()) == ["index", "manifest.json", "shards"]


# --- dedup ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """2000 rows with near-duplicate groups planted: pairs, triples, and chains (a ~ b ~ c, a !~ c)."""
    rng = np.random.default_rng(6)
    x = clustered(2000, seed=7)
    for k in range(40):
        base = x[10 * k]
        for j in range(1, 2 + k % 3):  # copies of row 10k, each a step further from it
            x[10 * k + j] = unit(base + 0.06 * j * rng.standard_normal(64) / 8)
    ds, _ = make_dataset(tmp_path_factory.mktemp("dedup") / "ds", x, shard_size=600)
    return ds, x


@pytest.mark.parametrize("threshold", [0.97, 0.99])
def test_dedup_exact_equals_brute_force(planted, threshold):
    ds, x = planted
    want = union_find_groups(x, threshold)
    assert any(len(g) >= 3 for g in want) and len(want) >= 20
    got = duplicate_rows(ds, threshold, method="exact", block_size=256)  # many tiles, the diagonal ones too
    assert [g.tolist() for g in got] == want
    ids = ds.ids()
    assert dedup(ds, threshold) == [[ids[i] for i in g] for g in want]


@pytest.mark.parametrize("ann", [False, True])
def test_dedup_through_the_index_equals_brute_force(planted, ann):
    ds, x = planted
    build_index(ds, ann=ann)
    got = duplicate_rows(ds, 0.97, method="index")
    assert [g.tolist() for g in got] == union_find_groups(x, 0.97)


def test_auto_dedup_goes_through_the_index_above_its_size(planted, monkeypatch):
    from perception_encoder.index import duplicates

    ds, x = planted
    monkeypatch.setattr(duplicates, "EXACT_MAX_VALUES", 1000)
    monkeypatch.setattr(duplicates, "_exact_pairs", lambda *args: pytest.fail("compared every pair"))
    build_index(ds)
    assert [g.tolist() for g in duplicate_rows(ds, 0.97)] == union_find_groups(x, 0.97)


def test_dedup_arguments_are_checked(planted):
    ds, _ = planted
    for bad in (0, 1.5, -0.2, "0.9"):
        with pytest.raises(ValueError, match="threshold"):
            dedup(ds, bad)
    with pytest.raises(ValueError, match="method"):
        dedup(ds, 0.9, method="fast")


def test_exact_copies_are_duplicates_at_threshold_one(tmp_path, vectors):
    x = vectors[:300].copy()
    x[200] = x[100]
    ds, _ = make_dataset(tmp_path / "ds", x, storage="float16")
    assert dedup(ds, 1.0) == [["img00100.jpg", "img00200.jpg"]]


# --- the commands, end to end with a real tiny model -----------------------------------------------------


@pytest.fixture(scope="module")
def image_dataset(tmp_path_factory):
    """12 random images listed in a Parquet table (a name, a caption and a width column), embedded by the
    dataset writer (``embed_dataset``) with a saved tiny CLIP, which the manifest names. Image 7 is a copy
    of image 3."""
    import shutil

    import pyarrow.parquet as pq
    from PIL import Image

    from conftest import randomize, tiny_clip_config
    from perception_encoder.clip import CLIP
    from perception_encoder.datasets.embed import embed_dataset
    from perception_encoder.factory import save

    base = tmp_path_factory.mktemp("images")
    checkpoint = save(randomize(CLIP(tiny_clip_config()), seed=3), base / "tiny.safetensors")
    rng = np.random.default_rng(8)
    (base / "inputs").mkdir()
    paths = [base / "inputs" / f"img{i:05d}.png" for i in range(12)]
    for i, path in enumerate(paths):
        if i == 7:
            shutil.copy(paths[3], path)
        else:
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    table = pa.table(
        {
            "name": [p.name for p in paths],
            "path": [str(p) for p in paths],
            "caption": [CAPTIONS[i % 3] for i in range(12)],
            "width": pa.array([100 + 10 * (i % 7) for i in range(12)], pa.int64()),
        }
    )
    pq.write_table(table, base / "images.parquet")
    root = base / "ds"
    embed_dataset(
        [base / "images.parquet"],
        root,
        model=checkpoint,
        normalize=True,
        image_column="path",
        id_column="name",
        shard_size=5,
    )
    settings = open_dataset(root).settings  # the manifest names the checkpoint the queries must go through
    assert (
        checkpoint.name in f"{settings.model} {settings.checkpoint}" and len(settings.checkpoint_sha256) == 64
    )
    return root, paths


def test_cli_index_search_dedup(image_dataset, tmp_path):
    root, paths = image_dataset
    runner = CliRunner()
    result = runner.invoke(main, ["index", str(root)])
    assert result.exit_code == 0, result.output
    assert "indexed 12 rows" in result.output and "exact search only" in result.output

    result = runner.invoke(
        main, ["search", str(root), "a red car", "--image", str(paths[5]), "-k", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [q["query"] for q in out] == ["a red car", str(paths[5])]
    assert [q["kind"] for q in out] == ["text", "image"]
    assert all(len(q["results"]) == 3 for q in out)
    best = out[1]["results"][0]
    assert best["id"] == "img00005.png" and best["score"] == pytest.approx(1.0, abs=1e-4)
    assert best["rank"] == 1 and best["metadata"] == {"caption": CAPTIONS[5 % 3], "width": 150}
    scores = [r["score"] for r in out[0]["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)

    result = runner.invoke(main, ["search", str(root), "--image", str(paths[2]), "--where", "width > 140"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()  # not a terminal: tab-separated, header first
    assert lines[0].split("\t") == ["query", "rank", "score", "id", "source", "caption", "width"]
    assert all(int(line.split("\t")[-1]) > 140 for line in lines[1:]) and len(lines) > 1

    out_csv = tmp_path / "groups.csv"
    result = runner.invoke(main, ["dedup", str(root), "--threshold", "0.999", "--out", str(out_csv)])
    assert result.exit_code == 0, result.output
    with open(out_csv, newline="") as f:
        assert list(csv.reader(f)) == [["id", "group"], ["img00003.png", "0"], ["img00007.png", "0"]]

    result = runner.invoke(main, ["dedup", str(root), "-t", "0.999", "--method", "index"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "threshold": 0.999,
        "rows": 12,
        "groups": [["img00003.png", "img00007.png"]],
    }


def test_cli_errors_are_one_line(image_dataset, tmp_path):
    root, paths = image_dataset
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(root)]).exit_code == 0
    for args, says in [
        (["search", str(root), "a cat", "--where", "heigth > 3"], "No field named heigth"),
        (["search", str(root)], "give at least one query"),
        (["dedup", str(root), "-t", "0"], "0.0<x<=1.0"),
        (["dedup", str(root), "-t", "0.9", "--out", str(tmp_path / "g.txt")], "must end with .csv"),
        (["search", str(tmp_path), "a cat"], "is not an embedding dataset"),
    ]:
        result = runner.invoke(main, args)
        assert result.exit_code != 0 and says in result.output, (args, result.output)
        assert "Traceback" not in result.output

"""Vector search over an embedding dataset: ``perception_encoder.index`` (LanceDB) against FAISS.

    python benchmarks/search_bench.py                       # 1M rows of 512-d, 200 queries (~7 min, 2 cores)
    python benchmarks/search_bench.py --rows 100000         # smaller
    python benchmarks/search_bench.py --ann ivf_pq          # the other ANN index LanceDB offers, to compare
    python benchmarks/search_bench.py --dedup-rows 50000    # also time exact and index dedup on a subset

What it does:

1. ``--rows`` random unit vectors of ``--dim`` (float32) in clusters, spread in a low-rank subspace plus a
   little isotropic noise (real embeddings are like this: not uniform on the sphere, so that nearest
   neighbours mean something); ``--queries`` more from the same distribution, not among the rows.
2. An embedding dataset of them (``write_shard`` + ``write_manifest``, shards of 65,536 rows), indexed by
   ``build_index`` twice: exact only (the LanceDB table) and with the ANN index (table + training).
3. FAISS ``IndexFlatIP`` over the same vectors: the anchor. Its top 10 of every query is the ground truth.
4. Latency per query (one query per call, median): FAISS flat, our exact search (``exact=True``, LanceDB's
   flat scan, on the first ``--exact-queries`` queries: it reads every row), our ANN search; recall@10 of
   each against FAISS; and FAISS and our ANN search with all queries in one call (time per query).
5. With ``--dedup-rows N``: ``duplicate_rows`` exact and through the ANN index on the first N rows, with
   1 % of them replaced by near-copies of others.

Timings are wall clock on a possibly shared machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from perception_encoder.datasets import open_dataset  # noqa: E402
from perception_encoder.datasets.items import InputItem  # noqa: E402
from perception_encoder.datasets.manifest import Manifest, Settings, ShardRecord, write_manifest  # noqa: E402
from perception_encoder.datasets.shards import ids_fingerprint, row_schema, write_shard  # noqa: E402
from perception_encoder.index import build as build_module  # noqa: E402
from perception_encoder.index import build_index, duplicate_rows, open_index  # noqa: E402

SHARD_ROWS = 65_536


def clustered(n: int, dim: int, seed: int = 0, rank: int = 32, spread: float = 0.6, noise: float = 0.15):
    """``(n, dim)`` float32 unit vectors: one of ``n // 1000`` random centres, plus a Gaussian step of norm
    ~``spread`` in a shared ``rank``-dimensional subspace, plus isotropic noise of norm ~``noise``."""
    rng = np.random.default_rng(seed)
    k = max(8, n // 1000)
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, SHARD_ROWS):
        m = min(SHARD_ROWS, n - s)
        x = centres[rng.integers(0, k, m)]
        x += (rng.standard_normal((m, rank)).astype(np.float32) * (spread / rank**0.5)) @ basis
        x += rng.standard_normal((m, dim)).astype(np.float32) * (noise / dim**0.5)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def write_dataset(root: Path, vectors: np.ndarray) -> None:
    """An embedding dataset of ``vectors``, as ``pe embed --out`` would write it (with a caption and a width)."""
    pa = __import__("pyarrow")
    n, dim = vectors.shape
    settings = Settings(
        model="random",
        checkpoint=None,
        checkpoint_sha256="0" * 64,
        dtype="fp32",
        pool="pooled",
        layer=None,
        normalize=True,
        frames=8,
        image_size=(224, 224),
        resize="squash",
        high_bit_depth="clip",
        storage="float32",
        dim=dim,
        shard_size=SHARD_ROWS,
        inputs=("random/",),
    )
    schema = row_schema(dim, "float32", [pa.field("caption", pa.string()), pa.field("width", pa.int64())])
    manifest = Manifest(settings=settings)
    for k, start in enumerate(range(0, n, SHARD_ROWS)):
        stop = min(n, start + SHARD_ROWS)
        items = [
            InputItem(
                i,
                f"{i:07d}.jpg",
                "random/",
                "file",
                metadata=(("caption", f"c{i % 10}"), ("width", i % 1000)),
            )
            for i in range(start, stop)
        ]
        record = ShardRecord(k, start, len(items), len(items), 0, ids_fingerprint(items))
        write_shard(root, record, items, vectors[start:stop], [], schema)
        manifest.shards.append(record)
    write_manifest(root, manifest)


def use_ivf_pq(dim: int) -> None:
    """Make ``build_index`` train LanceDB's IVF_PQ instead (sqrt(N) partitions, D/8 sub-vectors of 8 bits;
    searched with 20 probes and refine_factor 10, the settings that reached recall@10 >= 0.95 here)."""
    import math

    from lancedb.index import IvfPq

    def settings(rows: int):
        partitions = max(1, int(math.sqrt(rows)))
        config = IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=dim // 8)
        described = {
            "type": "IVF_PQ",
            "metric": "cosine",
            "num_partitions": partitions,
            "num_sub_vectors": dim // 8,
        }
        return config, described, {"nprobes": 20, "refine_factor": 10}

    build_module.ann_settings = settings


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(
        np.mean(
            [
                len(set(f.tolist()) & set(t.tolist())) / truth.shape[1]
                for f, t in zip(found, truth, strict=False)
            ]
        )
    )


def load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument(
        "--exact-queries", type=int, default=20, help="queries timed for exact search (a full scan each)"
    )
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--ann", choices=["default", "ivf_pq"], default="default", help="default: the library's ANN index"
    )
    ap.add_argument("--dedup-rows", type=int, default=0, help="also time dedup on this many rows (0: skip)")
    ap.add_argument("--work", default=None, help="folder for the dataset (default: a temporary one, removed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.ann == "ivf_pq":
        use_ivf_pq(args.dim)
    import faiss

    print(
        f"rows {args.rows:,}, dim {args.dim}, queries {args.queries}, k {args.k}; load average {load()}",
        flush=True,
    )
    work = Path(args.work or tempfile.mkdtemp(prefix="search-bench-"))
    root = work / "ds"
    shutil.rmtree(root, ignore_errors=True)
    try:
        t = time.perf_counter()
        data = clustered(args.rows + args.queries, args.dim, args.seed)
        rows, queries = data[: args.rows], data[args.rows :]
        write_dataset(root, rows)
        print(f"data + dataset written: {time.perf_counter() - t:.1f} s", flush=True)
        ds = open_dataset(root)

        flat_info = build_index(ds, ann=False)
        print(f"index, exact only: {flat_info.seconds:.1f} s", flush=True)
        exact = open_index(ds)
        exact_times, exact_found = [], []
        for q in queries[: args.exact_queries]:
            t = time.perf_counter()
            exact_found.append(exact.search(q, k=args.k)[0].rows)
            exact_times.append(time.perf_counter() - t)
        print(f"exact search: {median_ms(exact_times):.1f} ms median", flush=True)

        ann_info = build_index(ds, ann=True)
        print(
            f"index with ANN: {ann_info.seconds:.1f} s ({ann_info.ann}, search {ann_info.search_params})",
            flush=True,
        )
        ann = open_index(ds)
        ann.search(queries[:1], k=args.k)  # warm up: the index is read lazily
        ann_times, ann_found = [], []
        for q in queries:
            t = time.perf_counter()
            ann_found.append(ann.search(q, k=args.k)[0].rows)
            ann_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        batch = ann.search(queries, k=args.k)
        batch_ms = 1000 * (time.perf_counter() - t) / len(queries)

        t = time.perf_counter()
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(rows)
        faiss_build = time.perf_counter() - t
        faiss_times, truth = [], []
        for q in queries:
            t = time.perf_counter()
            truth.append(flat.search(q[None], args.k)[1][0])
            faiss_times.append(time.perf_counter() - t)
        truth = np.stack(truth)
        t = time.perf_counter()
        flat.search(queries, args.k)  # many queries in one call: a matrix product
        faiss_batch_ms = 1000 * (time.perf_counter() - t) / len(queries)

        anchor = median_ms(faiss_times)
        table = [
            ("FAISS IndexFlatIP (anchor)", faiss_build, anchor, 1.0),
            (f"FAISS IndexFlatIP, {len(queries)} queries per call", faiss_build, faiss_batch_ms, 1.0),
            (
                "ours, exact (LanceDB flat)",
                flat_info.seconds,
                median_ms(exact_times),
                recall(exact_found, truth[: len(exact_found)]),
            ),
            (
                f"ours, ANN ({ann_info.ann['type']})",
                ann_info.seconds,
                median_ms(ann_times),
                recall(ann_found, truth),
            ),
            (
                f"ours, ANN, {len(queries)} queries per call",
                ann_info.seconds,
                batch_ms,
                recall([b.rows for b in batch], truth),
            ),
        ]
        print(f"\nload average {load()}")
        print("| search | build s | latency ms (median) | x FAISS latency | recall@10 vs FAISS |")
        print("|---|---|---|---|---|")
        for name, build_s, ms, rec in table:
            print(f"| {name} | {build_s:.1f} | {ms:.2f} | {ms / anchor:.2f} | {rec:.3f} |")

        if args.dedup_rows:
            dedup_bench(root, rows[: args.dedup_rows])
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def dedup_bench(root: Path, rows: np.ndarray) -> None:
    """Exact dedup (every pair) against dedup through an ANN index, on the first rows, with planted copies."""
    rng = np.random.default_rng(1)
    rows = rows.copy()
    copies = rng.choice(len(rows), (len(rows) // 100, 2), replace=False)
    noisy = (
        rows[copies[:, 0]] + 0.02 * rng.standard_normal((len(copies), rows.shape[1])).astype(np.float32) / 8
    )
    rows[copies[:, 1]] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    sub = root.parent / "dedup"
    shutil.rmtree(sub, ignore_errors=True)
    write_dataset(sub, rows)
    t = time.perf_counter()
    exact = duplicate_rows(sub, 0.98, method="exact")
    exact_s = time.perf_counter() - t
    build_index(sub, ann=True)
    t = time.perf_counter()
    through_index = duplicate_rows(sub, 0.98, method="index")
    index_s = time.perf_counter() - t
    same = [g.tolist() for g in exact] == [g.tolist() for g in through_index]
    print(
        f"\ndedup of {len(rows):,} rows at 0.98: exact {exact_s:.1f} s ({len(exact)} groups), "
        f"through the ANN index {index_s:.1f} s ({len(through_index)} groups, equal: {same})"
    )
    shutil.rmtree(sub, ignore_errors=True)


if __name__ == "__main__":
    main()

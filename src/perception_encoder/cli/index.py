"""``pe index DATASET``: build (or rebuild) the vector index of an embedding dataset in ``DATASET/index/``."""

from __future__ import annotations

import click


@click.command("index")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--ann/--exact-only",
    default=None,
    help="Train an approximate-nearest-neighbour index, or keep exact search only "
    "(default: ANN from 100,000 rows).",
)
def command(dataset, ann):
    """Index an embedding dataset (made by `pe embed INPUTS --out DATASET`) for `pe search` and `pe dedup`.

    Rebuilding replaces the old index only once the new one is complete. Rerun it after `pe embed` adds
    rows: a stale index is refused."""
    from ..datasets import open_dataset
    from ..index import build_index

    ds = open_dataset(dataset)
    info = build_index(ds, ann=ann)
    kind = (
        f"{info.ann['type']} ANN index ({info.ann['num_partitions']} partition(s))"
        if info.ann
        else "exact search only"
    )
    click.echo(f"indexed {info.rows:,} rows of {ds.root} in {info.seconds:.1f} s: {kind}")

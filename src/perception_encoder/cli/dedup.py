"""``pe dedup DATASET --threshold T``: groups of near-duplicate rows of an embedding dataset, as JSON on
standard output or as ``id,group`` CSV rows (``--out groups.csv``)."""

from __future__ import annotations

import csv
import json

import click

from .options import check_output_file, out_option
from .output import wrote


@click.command("dedup")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--threshold",
    "-t",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    required=True,
    help="Cosine similarity from which two rows are near-duplicates, e.g. 0.95; groups are joined "
    "transitively.",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "exact", "index"]),
    default="auto",
    show_default=True,
    help="exact: compare every pair; index: each row's nearest rows through `pe index`'s index; auto: exact "
    "up to 390,000 rows of 512-d (rows x dim <= 2e8), the index above.",
)
@out_option(
    [".csv"], "Write `id,group` rows (rows in a group only) to this CSV file instead.", required=False
)
def command(dataset, threshold, method, out):
    """Find groups of near-duplicates; rows without one are in no group."""
    from ..atomic import atomic_write
    from ..datasets import open_dataset
    from ..index import dedup

    if out is not None:
        check_output_file(out, "groups file")
    ds = open_dataset(dataset)
    groups = dedup(ds, threshold, method=method)
    if out is None:
        click.echo(json.dumps({"threshold": threshold, "rows": len(ds), "groups": groups}, indent=2))
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "group"])
            writer.writerows([i, g] for g, ids in enumerate(groups) for i in ids)

    atomic_write(out, write)
    wrote(out, f"{len(groups)} groups of {sum(map(len, groups))} rows")

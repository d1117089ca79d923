"""``pe search DATASET "a red car" --image query.jpg``: the rows of an embedding dataset nearest to text or
image queries, embedded with the dataset's own model (its manifest's), through its index (``pe index``)."""

from __future__ import annotations

import json

import click

from .options import json_option
from .output import print_table


@click.command("search")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.argument("texts", nargs=-1)
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="An image (or video) query, repeatable; embedded as the dataset's rows were.",
)
@click.option(
    "--k", "-k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Rows per query."
)
@click.option(
    "--where",
    default=None,
    help="SQL filter on the rows' columns (id, source, metadata), e.g. \"width >= 512 AND caption LIKE "
    "'%car%'\".",
)
@click.option("--exact", is_flag=True, help="Scan every row, even when the index has an ANN index.")
@json_option
def command(dataset, texts, images, k, where, exact, as_json):
    """Search an indexed dataset with text and image queries (several of either). The queries go through
    the model, checkpoint and settings named in the dataset's manifest, so there is no --model option.

    Prints rank, score (cosine similarity), id, source and the metadata columns of each row found."""
    from ..datasets import open_dataset
    from ..index import open_index

    if not texts and not images:
        raise click.UsageError("give at least one query: a text argument or --image PATH")
    ds = open_dataset(dataset)
    index = open_index(ds)  # missing or stale index, bad filter: said before the model loads
    index.check_filter(where)
    queries = ds.embed_queries(texts=list(texts), images=list(images))
    labels = [*texts, *images]  # embed_queries' order: texts first
    hits = index.search(queries, k=k, where=where, exact=exact)
    if as_json:
        out = [
            {"query": str(label), "kind": "text" if i < len(texts) else "image", "results": h.records()}
            for i, (label, h) in enumerate(zip(labels, hits, strict=True))
        ]
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    columns = index.info.metadata_columns
    rows = []
    for label, h in zip(labels, hits, strict=True):
        for r in h.records():
            meta = ["" if r["metadata"][c] is None else r["metadata"][c] for c in columns]
            rows.append([label, r["rank"], f"{r['score']:.4f}", r["id"], r["source"], *meta])
    print_table(["query", "rank", "score", "id", "source", *columns], rows, right=("rank", "score"))

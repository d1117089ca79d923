"""What the ``pe`` commands print: tables, skipped inputs, warnings, written files.

Tables go to a terminal as boxed tables that fold long cells; to a pipe or a file they are printed as
tab-separated lines, one row per line with whole names (a tab, newline or backslash inside a cell is
escaped as in ``embedding.escape_name``), so ``pe classify ... | cut -f1`` gives the file names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click


def _cell(value: Any) -> str:
    from ..embedding.output import escape_name

    text = (
        value
        if isinstance(value, str)
        else os.fspath(value)
        if isinstance(value, os.PathLike)
        else str(value)
    )
    return escape_name(text).replace("\t", "\\t")


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    right: Sequence[str] = (),
    err: bool = False,
) -> None:
    """Print a table on stdout (stderr with ``err``): boxed on a terminal, tab-separated lines otherwise
    (the header line first, no title). ``right``: the headers of right-aligned columns."""
    stream = sys.stderr if err else sys.stdout
    if not stream.isatty():
        lines = ["\t".join(_cell(h) for h in headers), *("\t".join(_cell(v) for v in row) for row in rows)]
        click.echo("\n".join(lines), err=err)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for h in headers:
        table.add_column(h, justify="right" if h in right else "left", overflow="fold")
    for row in rows:
        table.add_row(*(escape(_cell(v)) for v in row))
    Console(file=stream).print(table)


def report_skipped(skipped: Sequence[Any], limit: int | None = None) -> None:
    """Tell the user which inputs were skipped and why (on stderr), without stopping the run."""
    shown = skipped if limit is None else skipped[:limit]
    for item in shown:
        # loader errors usually name the file already; odd names are escaped so each skip is one line
        path = str(item.path)
        text = (
            item.reason.replace(path, _cell(path)) if path in item.reason else f"{_cell(path)}: {item.reason}"
        )
        click.secho(f"skipped {' '.join(text.splitlines())}", fg="yellow", err=True)
    if len(shown) < len(skipped):
        click.secho(f"... and {len(skipped) - len(shown)} more skipped", fg="yellow", err=True)


def report_notes(notes: Sequence[str]) -> None:
    """Warnings raised while reading the inputs, each once per run."""
    for note in notes:
        click.secho(f"warning: {note}", fg="yellow", err=True)


def wrote(path: os.PathLike | str, what: str) -> None:
    click.echo(f"wrote {what} to {path}")

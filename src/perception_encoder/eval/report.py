"""Evaluation results: one plain dict per run, written as JSON and shown as a rich table.

Schema (every task)::

    {"task": "zeroshot", "data": "<dataset path>", "model": "<name>" (set by the CLI),
     "num_samples": N, "num_evaluated": M, "num_skipped": N - M,
     "skipped": [{"path": ..., "reason": ...}, ...],
     "metrics": {"top1": 0.81, "top5": null, ...},   # fractions in [0, 1]; null = undefined
     "per_class": [{"class": ..., "samples": n, "recall": r}, ...],  # classification tasks
     ... task-specific facts (num_classes, num_templates, k, features, ...)}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .embed import Skipped


def base_result(
    task: str, source: str, num_samples: int, skipped: list[Skipped], notes: list[str] | None = None
) -> dict[str, Any]:
    """The fields every result starts with (``notes``: remarks about the dataset, kept when non-empty)."""
    return {
        "task": task,
        "data": source,
        "metrics": {},  # filled in by the task; placed first so it leads the JSON
        "num_samples": num_samples,
        "num_evaluated": num_samples - len(skipped),
        "num_skipped": len(skipped),
        "skipped": [asdict(s) for s in skipped],
        **({"notes": list(notes)} if notes else {}),
    }


def per_class_table(classnames: list[str], preds, targets) -> list[dict[str, Any]]:
    """The ``per_class`` entry of classification results: name, sample count and recall of each class
    that has samples (a list, as class names may repeat)."""
    from .metrics import per_class_recall

    return [
        {"class": classnames[c], "samples": n, "recall": r}
        for c, n, r in per_class_recall(preds, targets, len(classnames))
    ]


def _clean(value: Any) -> Any:
    # NaN / inf are not JSON: report them as null (undefined)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(results: dict[str, Any]) -> str:
    """The results as indented JSON text."""
    return json.dumps(_clean(results), indent=2, ensure_ascii=False)


def write_json(results: dict[str, Any], path: str | os.PathLike) -> None:
    """Write the results as JSON; ``"-"`` means standard output."""
    text = to_json(results) + "\n"
    if str(path) == "-":
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.2f}"
    return str(value)


_FACTS = (
    "model",
    "data",
    "num_classes",
    "num_templates",
    "num_captions",
    "features",
    "k",
    "temperature",
    "c",
    "num_frames",
)


def render_table(results: dict[str, Any]):
    """A ``rich.table.Table``: metrics in percent, then the run's facts and the sample counts."""
    from rich.table import Table

    table = Table(title=f"pe eval {results.get('task', '').replace('_', '-')}".strip(), show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in results.get("metrics", {}).items():
        table.add_row(name, _fmt(value) + (" %" if isinstance(value, float) else ""))
    table.add_section()
    for key in _FACTS:
        if key in results and results[key] is not None:
            table.add_row(key, str(results[key]))
    table.add_row("evaluated", f"{results.get('num_evaluated', 0)} of {results.get('num_samples', 0)}")
    if results.get("num_skipped"):
        table.add_row("skipped (unreadable)", str(results["num_skipped"]))
    if "num_train" in results:
        table.add_row("train evaluated", f"{results.get('num_train_evaluated', 0)} of {results['num_train']}")
        if results.get("num_train_skipped"):
            table.add_row("train skipped (unreadable)", str(results["num_train_skipped"]))
    return table


def render_per_class(results: dict[str, Any]):
    """A ``rich.table.Table`` of the per-class recalls of a classification result."""
    from rich.table import Table

    table = Table(title="recall per class", show_header=True)
    table.add_column("class")
    table.add_column("samples", justify="right")
    table.add_column("recall", justify="right")
    for row in results.get("per_class", []):
        table.add_row(str(row["class"]), str(row["samples"]), _fmt(row["recall"]) + " %")
    return table


def print_report(results: dict[str, Any], console=None, max_skipped: int = 10, max_classes: int = 20) -> None:
    """Print the table (and the per-class recalls when there are at most ``max_classes`` classes), then the
    first ``max_skipped`` skipped files with their reasons."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    console.print(render_table(results))
    if 0 < len(results.get("per_class", [])) <= max_classes:
        console.print(render_per_class(results))
    for note in results.get("notes", []):
        console.print(f"note: {escape(note)}", highlight=False)
    skipped = results.get("skipped", []) + results.get("train_skipped", [])
    for s in skipped[:max_skipped]:
        # loader errors usually name the file already
        what = s["reason"] if s["path"] in s["reason"] else f"{s['path']}: {s['reason']}"
        console.print(f"[yellow]skipped[/yellow] {escape(what)}", highlight=False)
    if len(skipped) > max_skipped:
        console.print(f"[yellow]... and {len(skipped) - max_skipped} more skipped files[/yellow]")

"""Evaluation results: one plain dict per run, written as JSON; its rows for a printed table.

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

from ..atomic import atomic_write
from ..embedding import Skipped


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
    """Write the results as JSON (through a temporary file: an earlier file is never half replaced);
    ``"-"`` means standard output."""
    text = to_json(results) + "\n"
    if str(path) == "-":
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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


def metrics_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows: metrics in percent, then the run's facts and the sample counts."""
    rows = [
        (name, _fmt(v) + (" %" if isinstance(v, float) else ""))
        for name, v in results.get("metrics", {}).items()
    ]
    rows += [(key, str(results[key])) for key in _FACTS if key in results and results[key] is not None]
    rows.append(("evaluated", f"{results.get('num_evaluated', 0)} of {results.get('num_samples', 0)}"))
    if results.get("num_skipped"):
        rows.append(("skipped (unreadable)", str(results["num_skipped"])))
    if "num_train" in results:
        rows.append(("train evaluated", f"{results.get('num_train_evaluated', 0)} of {results['num_train']}"))
        if results.get("num_train_skipped"):
            rows.append(("train skipped (unreadable)", str(results["num_train_skipped"])))
    return rows


def per_class_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(class, samples, recall) rows of a classification result."""
    return [
        (str(r["class"]), str(r["samples"]), _fmt(r["recall"]) + " %") for r in results.get("per_class", [])
    ]

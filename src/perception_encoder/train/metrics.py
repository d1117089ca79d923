"""The metrics log: one CSV row per logged step (and TensorBoard scalars when it is installed and asked for).

On resume the CSV keeps the rows up to the checkpoint's step and drops any logged after it by the killed
run, so the file always describes one continuous run.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("perception_encoder.train")

FIELDS = (
    "step",
    "epoch",
    "loss",
    "clip_loss",
    "mask_loss",
    "lr",
    "logit_scale",
    "image_size",
    "samples",
    "bad_samples",
    "samples_per_s",
)


class MetricsLog:
    """Appends rows to ``<out>/metrics.csv``; ``resume_step`` trims rows after that step first."""

    def __init__(
        self, out_dir: str | Path, *, resume_step: int | None = None, tensorboard: bool = False
    ) -> None:
        self.path = Path(out_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; logging to metrics.csv only")

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writerow({k: _fmt(row.get(k)) for k in FIELDS})
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The CSV log as a list of rows with numeric values (empty cells become ``nan``)."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) if v != "" else float("nan") for k, v in r.items()} for r in csv.DictReader(f)]

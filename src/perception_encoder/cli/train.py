"""``pe train``: contrastive training or fine-tuning with PE's recipe, from a JSON config and/or flags.

Flags override the config file's values. Under ``torchrun`` each process runs this command; ranks,
devices and the process group come from the environment.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from ..input_files import parse_json, read_text
from ..limits import MAX_BATCH_SIZE, MAX_FRAMES


def _overrides(**flags: Any) -> dict[str, Any]:
    """Map given flags (None = not given) to dotted config keys."""
    from ..train.config import parse_stages

    keys = {
        "model": "model",
        "init": "init",
        "data": "data.source",
        "data_kind": "data.kind",
        "path_column": "data.path_column",
        "caption_column": "data.caption_column",
        "frames": "data.frames",
        "workers": "data.num_workers",
        "steps": "steps",
        "image_size": "image_size",
        "batch_size": "batch_size",
        "accum": "accum_steps",
        "lr": "optim.lr",
        "optimizer": "optim.name",
        "weight_decay": "optim.weight_decay",
        "warmup": "optim.warmup_steps",
        "schedule": "optim.schedule",
        "grad_clip": "optim.grad_clip",
        "flip": "augment.flip",
        "mask_fraction": "mask.fraction",
        "mask_ratio": "mask.ratio",
        "precision": "precision",
        "device": "device",
        "seed": "seed",
        "out": "out",
        "resume": "resume",
        "checkpoint_every": "checkpoint_every",
        "log_every": "log_every",
        "stop_at_step": "stop_at_step",
    }
    out: dict[str, Any] = {keys[k]: v for k, v in flags.items() if k in keys and v is not None}
    if flags.get("stages"):
        out["stages"] = [
            {"image_size": s.image_size, "steps": s.steps} for s in parse_stages(flags["stages"])
        ]
        out["steps"] = None  # a flag replaces the file's run length, whichever form it had
    elif flags.get("steps") is not None:
        out["stages"] = []
    if flags.get("freeze"):
        out["freeze"] = list(flags["freeze"])
    if flags.get("model_config"):
        path = flags["model_config"]
        out["model_config"] = parse_json(read_text(path, "model config"), f"model config {path}")
        out["model"] = None
    elif flags.get("model"):
        out["model_config"] = None  # a --model flag replaces the file's model, in either form
    for flag, key in (
        ("augment", "augment.enabled"),
        ("mask", "mask.enabled"),
        ("learn_temperature", "loss.learn_logit_scale"),
        ("grad_checkpointing", "grad_checkpointing"),
        ("progress", "progress"),
        ("tensorboard", "tensorboard"),
    ):
        if flags.get(flag) is not None:
            out[key] = flags[flag]
    return out


@click.command(
    "train",
    epilog="""\b
Examples:
  pe train --model PE-Core-T16-384 --data pairs.csv --steps 2000 --batch-size 256 --out runs/t16
  pe train --config run.json --resume auto
  pe train --model-config tiny.json --data synthetic:20000 --stages 32:300,64:200 --out runs/tiny
  pe train --init PE-Core-B16-224 --data clips.csv --frames 8 --lr 1e-4 --steps 500   # video fine-tuning
  torchrun --nproc_per_node 4 $(which pe) train --config run.json                         # data parallel
""",
)
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="Run config JSON."
)
@click.option("--model", "-m", help="Registered model name (pe models) or a model config JSON file.")
@click.option("--model-config", type=click.Path(exists=True, dir_okay=False), help="Custom CLIPConfig JSON.")
@click.option("--init", help="Weights to fine-tune from: a checkpoint path or a registered name.")
@click.option("--data", help="Folder, .csv/.tsv/.parquet table, tar shards, or synthetic[:N].")
@click.option("--data-kind", type=click.Choice(["auto", "folder", "csv", "parquet", "tar", "synthetic"]))
@click.option("--path-column", help="Table column holding image/video paths.")
@click.option("--caption-column", help="Table column holding captions.")
@click.option(
    "--frames",
    type=click.IntRange(1, MAX_FRAMES),
    help="Video fine-tuning: frames per clip (paths are videos/frame folders).",
)
@click.option("--workers", "-w", type=click.IntRange(0, 256), help="Data-loader worker processes.")
@click.option("--steps", type=int, help="Optimiser steps (one stage at --image-size).")
@click.option("--image-size", type=int, help="Training resolution (default: the model's native size).")
@click.option("--stages", help="Progressive resolution, SIZE:STEPS,... e.g. 98:1000,154:1000,224:500.")
@click.option(
    "--batch-size",
    "-b",
    type=click.IntRange(1, MAX_BATCH_SIZE),
    help="Global micro-batch size (all processes together).",
)
@click.option("--accum", type=int, help="Micro-batches per optimiser step (gradient accumulation).")
@click.option("--lr", type=float, help="Peak learning rate (LAMB default 2e-3).")
@click.option("--optimizer", type=click.Choice(["lamb", "adamw"]))
@click.option("--weight-decay", type=float)
@click.option("--warmup", type=int, help="Linear warm-up steps.")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]))
@click.option("--grad-clip", type=float, help="Global gradient-norm clip.")
@click.option("--augment/--no-augment", default=None, help="Crop, colour jitter and flip.")
@click.option("--flip", type=float, help="Horizontal flip probability (captions' left/right are swapped).")
@click.option("--mask/--no-mask", default=None, help="Mask regularisation.")
@click.option("--mask-fraction", type=float, help="Fraction of each batch re-encoded masked (default 1/16).")
@click.option("--mask-ratio", type=float, help="Fraction of patches masked in those images.")
@click.option("--learn-temperature/--fixed-temperature", "learn_temperature", default=None)
@click.option(
    "--freeze", multiple=True, help="Leave parameters with this name prefix untrained (repeatable)."
)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="bf16/fp16: autocast.")
@click.option("--grad-checkpointing/--no-grad-checkpointing", default=None, help="Activation checkpointing.")
@click.option("--device", help="Torch device: auto (cuda when available), cpu, cuda:1, ... [default: auto]")
@click.option("--seed", type=int)
@click.option("--out", "-o", help="Run folder: checkpoints, metrics.csv, model.safetensors.")
@click.option("--resume", help="A training checkpoint, or 'auto' (the run folder's last one, if any).")
@click.option("--checkpoint-every", type=int, help="Steps between checkpoints.")
@click.option("--log-every", type=int, help="Steps between metrics rows.")
@click.option("--stop-at-step", type=int, help="End this invocation at that step (resume later).")
@click.option("--progress/--no-progress", default=None, help="Progress bar.")
@click.option("--tensorboard/--no-tensorboard", default=None, help="Also log to TensorBoard (if installed).")
@click.option("--threads", type=int, help="CPU threads per process (torch.set_num_threads).")
@click.option("--print-config", is_flag=True, help="Print the resolved config as JSON and exit.")
def command(config_path: str | None, print_config: bool, threads: int | None, **flags: Any) -> None:
    """Contrastive training / fine-tuning with PE's recipe (LAMB, progressive resolution, augmentation,
    mask regularisation, video frame averaging), on one process or under torchrun."""
    from ..train import TrainConfig, train

    try:
        base = TrainConfig.from_json(config_path) if config_path else TrainConfig()
        config = base.with_overrides(_overrides(**flags))
        if print_config:
            click.echo(config.to_json())
            return
        config.validate()
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as e:
        raise click.UsageError(str(e)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    result = train(config)  # errors become one-line messages in cli.main
    if result.rank != 0:
        return  # under torchrun, rank 0 reports
    summary = {
        "step": result.step,
        "total_steps": result.total_steps,
        "final_loss": result.losses[-1] if result.losses else None,
        "bad_samples": result.bad_samples,
        "model": str(result.model_path) if result.model_path else None,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "metrics": str(result.metrics_path) if result.metrics_path else None,
        "minutes": round(result.seconds / 60, 2),
    }
    click.echo(json.dumps(summary, indent=2))

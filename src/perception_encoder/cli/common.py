"""Options and helpers shared by the ``pe`` commands: model selection, loading, error reporting."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

FALLBACK_MODEL = "PE-Core-B16-224"


def default_model() -> str:
    """The bundled offline model when one is registered (no network needed), else a released PE-Core."""
    from ..configs import list_models

    bundled = list_models("bundled")
    return bundled[0] if bundled else FALLBACK_MODEL


def model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--model``, ``--checkpoint``, ``--device`` and ``--dtype`` to a command."""

    @click.option(
        "--model",
        "-m",
        "model_name",
        default=None,
        help="Registered model name (`pe models`); default: the bundled offline model.",
    )
    @click.option(
        "--checkpoint",
        "-c",
        default=None,
        help="Weights to use: a local file in any supported format, or hf-hub:<repo>[/<file>].",
    )
    @click.option(
        "--device", default=None, help="Torch device, e.g. cpu or cuda (default: cuda if available)."
    )
    @click.option(
        "--dtype",
        type=click.Choice(["fp32", "bf16", "fp16"]),
        default="fp32",
        show_default=True,
        help="Compute dtype of the model weights.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def pick_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    model_name: str | None,
    checkpoint: str | None,
    device: str | None,
    dtype: str = "fp32",
    *,
    vision_only: bool = False,
):
    """Load a model for a command; any loading problem becomes a one-line ``click.ClickException``."""
    from ..factory import load

    if model_name is None and checkpoint is not None:
        name, checkpoint = checkpoint, None  # a checkpoint alone: its config comes from the file
    else:
        name = model_name or default_model()
    try:
        return load(
            name, checkpoint=checkpoint, vision_only=vision_only, device=pick_device(device), dtype=dtype
        )
    except (KeyError, ValueError, OSError, TypeError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise click.ClickException(f"cannot load model {name!r}: {message}") from exc


def require_clip(model: Any, command: str) -> None:
    if not hasattr(model, "encode_text"):
        raise click.ClickException(
            f"`pe {command}` needs a CLIP model with a text tower (PE-Core or the bundled model), "
            f"not the vision-only {type(model).__name__}"
        )


def split_labels(labels: str) -> list[str]:
    """``"a, b ,c"`` -> ``["a", "b", "c"]``; an empty list is an error."""
    names = [s.strip() for s in labels.split(",") if s.strip()]
    if not names:
        raise click.BadParameter("give at least one label, e.g. --labels 'cat,dog'", param_hint="--labels")
    return names


def report_skipped(skipped: list[Any]) -> None:
    """Tell the user which inputs were skipped and why (on stderr), without stopping the run."""
    for item in skipped:
        click.secho(f"skipped {item.path}: {item.reason}", fg="yellow", err=True)

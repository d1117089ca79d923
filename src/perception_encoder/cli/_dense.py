"""Options and helpers shared by the dense-feature commands (features, pca, similarity, correspond, track).

Not a command itself (``cli/main.py`` lists only commands), just the pieces those five have in common.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

IMAGE_PATH = click.Path(exists=True, dir_okay=False)


class ImageSizeType(click.ParamType):
    """``S`` or ``HxW`` -> ``S`` or ``(H, W)``."""

    name = "SIZE"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | tuple[int, int]:
        if isinstance(value, (int, tuple)):
            return value
        text = str(value).lower().replace(" ", "")
        try:
            parts = [int(v) for v in text.split("x")]
        except ValueError:
            self.fail(f"{value!r} is not a size: use S (e.g. 448) or HxW (e.g. 448x672)", param, ctx)
        if len(parts) not in (1, 2) or min(parts) <= 0:
            self.fail(f"{value!r} is not a size: use S (e.g. 448) or HxW (e.g. 448x672)", param, ctx)
        return parts[0] if len(parts) == 1 else (parts[0], parts[1])


class PointType(click.ParamType):
    """``X,Y`` pixel coordinates -> ``(x, y)`` floats."""

    name = "X,Y"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        try:
            x, y = (float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a point: use X,Y in pixels, e.g. 120,80", param, ctx)
        return x, y


def layer_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--layer",
        "-l",
        type=int,
        default=-1,
        show_default=True,
        help="Block whose output is used: 0 = first, -1 = last (Python-style index).",
    )(func)


def image_size_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--image-size",
        type=ImageSizeType(),
        default=None,
        help="Squash-resize input to SIZE = S (S x S) or HxW pixels (default: the model's native size).",
    )(func)


def out_option(suffixes: Sequence[str], what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--out/-o FILE`` (required) whose name must end with one of ``suffixes``."""

    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        if not any(value.lower().endswith(s) for s in suffixes):
            raise click.BadParameter(f"{value!r} must end with {' or '.join(suffixes)}", ctx, param)
        return value

    return click.option(
        "--out", "-o", required=True, type=click.Path(dir_okay=False), callback=check, help=what
    )


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors about the user's inputs into one-line ``click`` errors."""
    from ..errors import PEError

    try:
        yield
    except click.ClickException:
        raise
    except (PEError, ValueError, IndexError, TypeError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def open_rgb(path: str | os.PathLike):
    """An image file as an RGB PIL image; unreadable files become a click error naming the file."""
    from ..images import load_image

    with user_errors():
        return load_image(path).convert("RGB")


def get_model(
    model_name: str | None, checkpoint: str | None, device: str | None, dtype: str, *, vision_only: bool
):
    from . import common

    return common.load_model(model_name, checkpoint, device, dtype, vision_only=vision_only)


def wrote(path: os.PathLike | str, what: str) -> None:
    click.echo(f"wrote {what} to {path}")

"""Every option the ``pe`` commands share, defined once (same name, same short flag, same help in every
command), loading the model they name, and the one translation of library errors into CLI messages.

Short flags: ``-m`` model, ``-c`` checkpoint, ``-b`` batch size, ``-w`` workers, ``-o`` output,
``-l`` labels, ``-t`` template, ``-k`` top-k. ``--layer``, ``--pool``, ``--frames``, ``--device``,
``--dtype``, ``--json`` and ``--progress`` have no short form.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import click

from ..limits import MAX_BATCH_SIZE, MAX_FRAMES

FALLBACK_MODEL = "PE-Core-B16-224"
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def options(*decorators: Decorator) -> Decorator:
    """Apply several options at once; the first given is the first in ``--help``."""

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for decorate in reversed(decorators):
            f = decorate(f)
        return f

    return apply


# --- errors -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn errors about the user's inputs into one-line ``click`` errors (``Error: ...``, exit 1).

    Every command runs inside it (``cli.main``). Set ``PE_DEBUG=1`` to see the traceback instead."""
    from ..configs import UnknownModelError

    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise  # click's own: usage errors, --help and --version exits (Exit and Abort are RuntimeErrors)
    except UnknownModelError as exc:
        raise click.ClickException(str(exc)) from exc
    except (ValueError, TypeError, IndexError, KeyError, OSError, ImportError, RuntimeError) as exc:
        if os.environ.get("PE_DEBUG", "").strip() not in ("", "0"):
            raise
        message = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        raise click.ClickException("; ".join(lines) or type(exc).__name__) from exc  # one line


# --- the model ----------------------------------------------------------------------------------------------


def default_model() -> str:
    """The bundled offline model when one is registered (no network needed), else a released PE-Core."""
    from ..configs import list_models

    bundled = list_models("bundled")
    return bundled[0] if bundled else FALLBACK_MODEL


model_option = click.option(
    "--model",
    "-m",
    "model_name",
    default=None,
    help="Registered model name (`pe models`) or a checkpoint path; default: the bundled offline model.",
)
checkpoint_option = click.option(
    "--checkpoint",
    "-c",
    default=None,
    help="Weights: a local file in any supported layout, or hf-hub:<repo>[/<file>]; alone, the config saved "
    "beside the file is used.",
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Torch device: auto (cuda when available), cpu, cuda:1, ...",
)
DTYPES = ("fp32", "bf16", "fp16")
dtype_option = click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="fp32",
    show_default=True,
    help="Compute dtype of the weights.",
)


strict_option = click.option(
    "--strict/--no-strict",
    default=True,
    show_default=True,
    help="--no-strict loads what fits, as the reference does: unexpected keys ignored, missing ones left at "
    "their initial values (both reported).",
)


@dataclass(frozen=True)
class ModelChoice:
    """What ``--model``, ``--checkpoint``, ``--device``, ``--dtype`` and ``--strict`` chose."""

    name: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    strict: bool = True

    @property
    def label(self) -> str:
        """How results name the model: the name or checkpoint given, else the default model."""
        return str(self.name or self.checkpoint or default_model())

    def load(self, *, vision_only: bool = False, device: str | None = None, dtype: str | None = None):
        """The model, in eval mode (``load_model``); ``device`` / ``dtype`` override the options."""
        return load_model(
            self.name,
            self.checkpoint,
            device or self.device,
            dtype or self.dtype,
            vision_only=vision_only,
            strict=self.strict,
        )


_MODEL_FIELDS = {
    "model_name": "name",
    "checkpoint": "checkpoint",
    "device": "device",
    "dtype": "dtype",
    "strict": "strict",
}


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--model``, ``--checkpoint``, ``--device``, ``--dtype`` and ``--strict``, handed to the command as one
    ``model_choice: ModelChoice``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        choice = ModelChoice(**{field: kwargs.pop(opt) for opt, field in _MODEL_FIELDS.items()})
        return f(*args, model_choice=choice, **kwargs)

    return options(model_option, checkpoint_option, device_option, dtype_option, strict_option)(wrapper)


def pick_device(device: str | None) -> str:
    """``auto`` (or nothing) -> ``cuda`` when a GPU is available, else ``cpu``; other names as given."""
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    model_name: str | None,
    checkpoint: str | None,
    device: str | None = "auto",
    dtype: str = "fp32",
    *,
    vision_only: bool = False,
    strict: bool = True,
):
    """The model a command names, in eval mode; any loading problem is a one-line error naming it.

    ``--checkpoint`` alone brings its own config (saved beside it, or read from its shapes); neither
    option gives the bundled model. With ``strict=False`` what was ignored or left at its initial value is
    printed on stderr."""
    import warnings

    from ..factory import load

    if model_name is None and checkpoint is not None:
        name, checkpoint = checkpoint, None
    else:
        name = model_name or default_model()
    try:
        with user_errors(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            model = load(
                name,
                checkpoint=checkpoint,
                vision_only=vision_only,
                device=pick_device(device),
                dtype=dtype,
                strict=strict,
            ).eval()
    except click.ClickException as exc:
        raise click.ClickException(f"cannot load model {name!r}: {exc.message}") from exc
    for w in caught:
        click.secho(f"warning: {w.message}", fg="yellow", err=True)
    return model


def require_clip(model: Any, command: str) -> None:
    """A one-line error when ``pe <command>`` gets a model without a text tower."""
    from ..embedding import require_clip as check

    try:
        check(model, f"`pe {command}`")
    except TypeError as exc:
        raise click.ClickException(str(exc)) from None


# --- inputs and batching --------------------------------------------------------------------------------


def batch_size_option(default: int, help: str = "Images per forward pass.") -> Decorator:
    return click.option(
        "--batch-size",
        "-b",
        type=click.IntRange(1, MAX_BATCH_SIZE),
        default=default,
        show_default=True,
        help=help,
    )


def backend_option(help: str) -> Decorator:
    """``--backend torch|onnxruntime``: the model in PyTorch, or graphs exported by ``pe export onnx``."""
    return click.option(
        "--backend",
        type=click.Choice(["torch", "onnxruntime"]),
        default="torch",
        show_default=True,
        help=help,
    )


workers_option = click.option(
    "--workers",
    "-w",
    type=click.IntRange(0, 256),
    default=0,
    show_default=True,
    help="Loader processes decoding files while the model encodes.",
)


def frames_option(default: int = 8) -> Decorator:
    return click.option(
        "--frames",
        type=click.IntRange(1, MAX_FRAMES),
        default=default,
        show_default=True,
        help=f"Frames per video, spread uniformly (at most {MAX_FRAMES}; a shorter video gives each of its "
        "frames once).",
    )


MODALITIES = ("audio", "video", "audio-video")
modality_option = click.option(
    "--modality",
    type=click.Choice(MODALITIES),
    default=None,
    help="PE-AV models: what each file gives, audio (an audio file or a video's sound), video (its frames) or "
    "audio-video (both, fused) [default: audio for audio files, video for video files].",
)


def layer_option(default: int | None = None) -> Decorator:
    """``--layer``: with ``default=None`` (the embedding commands) no layer means the pooled embedding."""
    return click.option(
        "--layer",
        type=int,
        default=default,
        show_default=default is not None,
        help="Block whose output is used: 0 = first, -1 = last (Python-style index)"
        + (", instead of the pooled embedding." if default is None else "."),
    )


pool_option = click.option(
    "--pool",
    type=click.Choice(["pooled", "mean", "cls"]),
    default=None,
    help="pooled: the model's embedding; mean: mean of the patch tokens; cls: the CLS token "
    "(default: pooled, or mean with --layer).",
)


def feature_spec(layer: int | None, pool: str | None):
    """``--layer`` / ``--pool`` -> an ``embedding.FeatureSpec``; a contradiction is a usage error."""
    from ..embedding import FeatureSpec

    try:
        return FeatureSpec.from_options(layer, pool)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


high_bit_depth_option = click.option(
    "--high-bit-depth",
    type=click.Choice(["clip", "scale"]),
    default="clip",
    show_default=True,
    help="16-bit and float images: clip values to 0-255 as the reference does (most 16-bit pixels turn "
    "white), or scale 0-65535 / [0, 1] to 0-255.",
)
normalize_option = click.option(
    "--normalize/--no-normalize", default=False, show_default=True, help="L2-normalise each output row."
)
progress_option = click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal)."
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON on standard output instead of a table."
)


def show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


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
            parts = []
        if len(parts) not in (1, 2) or min(parts) <= 0 or max(parts) > 16384:
            self.fail(
                f"{value!r} is not a size: use S (e.g. 448) or HxW (e.g. 448x672), up to 16384", param, ctx
            )
        return parts[0] if len(parts) == 1 else (parts[0], parts[1])


image_size_option = click.option(
    "--image-size",
    type=ImageSizeType(),
    default=None,
    help="Squash-resize input to SIZE = S (S x S) or HxW pixels (default: the model's native size).",
)


# --- outputs ------------------------------------------------------------------------------------------------


def out_option(suffixes: Sequence[str], what: str, *, required: bool = True, kind: str = "file") -> Decorator:
    """``--out/-o``: a file whose name ends with one of ``suffixes`` (no check when empty); ``kind``:
    ``"file"``, ``"folder"`` or ``"either"``."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None and suffixes and not value.lower().endswith(tuple(suffixes)):
            raise click.BadParameter(f"{value!r} must end with {' or '.join(suffixes)}", ctx, param)
        return value

    path = {
        "file": click.Path(dir_okay=False),
        "folder": click.Path(file_okay=False),
        "either": click.Path(),
    }[kind]
    return click.option("--out", "-o", required=required, type=path, callback=check, help=what)


def check_output_file(path: str, what: str = "output") -> None:
    """Before the work: the output can be written (folder made, writable, name not too long)."""
    from ..atomic import check_writable

    check_writable(path, what)


# --- the dense-feature commands' inputs ---------------------------------------------------------------------

IMAGE_PATH = click.Path(exists=True, dir_okay=False)


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


def open_rgb(path: str | os.PathLike):
    """An image file as an RGB PIL image (``transforms.to_rgb``); ``ImageLoadError`` names a bad file."""
    from ..images import load_image
    from ..transforms import to_rgb

    return to_rgb(load_image(path))


# --- files in, embeddings out ---------------------------------------------------------------------------


def find_inputs(paths: Sequence[str], *, audio: bool = False) -> Any:
    """The ``embedding.Inputs`` of ``paths`` (files and folders; audio files too with ``audio``); names
    that cannot be used are reported as skipped, and finding no file at all is an error."""
    from ..embedding import expand_inputs
    from .output import report_skipped

    inputs = expand_inputs(paths, audio=audio)
    report_skipped(inputs.skipped)
    if not inputs.files:
        kinds = "audio or video" if audio else "image or video"
        raise click.ClickException(f"no {kinds} files found in " + ", ".join(map(str, paths)))
    return inputs


def chooses_av_model(choice: ModelChoice) -> bool:
    """Whether ``--model`` / ``--checkpoint`` name a PE-AV or PE-A-Frame model (read from the name, the
    folder's config or the file's keys; nothing is loaded)."""
    from ..av.loading import is_av_source

    name = choice.name or choice.checkpoint or default_model()
    return is_av_source(name, choice.checkpoint if choice.name else None)


def check_embedded(result: Any, total: int) -> None:
    """Report what the pipeline skipped and warned about; none of ``total`` files embedded is an error."""
    from .output import report_notes, report_skipped

    report_notes(result.notes)
    report_skipped(result.skipped)
    if not result.paths:
        raise click.ClickException(f"none of the {total} files could be read")

"""``pe eval``: zero-shot, retrieval, linear-probe, k-NN and video evaluation from files.

Every subcommand loads a model (``--model`` name or checkpoint path, ``--checkpoint`` weights; default:
the bundled model when one is registered), evaluates, prints a table (or JSON with ``--json -``) and
optionally writes the JSON result. Unreadable files are reported and skipped; the run fails only when
nothing at all could be read.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import click


@dataclass(frozen=True)
class EvalRun:
    """The options every subcommand shares, and what a subcommand does with them: load the model, hand
    the loader settings to the evaluation, report the results."""

    model_name: str | None
    checkpoint: str | None
    batch_size: int
    device: str
    dtype: str
    num_workers: int
    center_crop: bool
    json_out: str | None
    progress: bool | None

    @property
    def name(self) -> str:
        from .common import default_model

        return str(self.model_name or self.checkpoint or default_model())

    def load(self, vision_only: bool = False):
        """The model to evaluate, in eval mode (the shared ``--model`` rules of ``cli.common.load_model``:
        ``--checkpoint`` alone brings its own config; neither: the bundled model)."""
        from .common import load_model

        device = None if self.device == "auto" else self.device
        model = load_model(self.model_name, self.checkpoint, device, self.dtype, vision_only=vision_only)
        return model.eval()

    def loader(self, model) -> dict[str, Any]:
        """``transform``, ``batch_size``, ``num_workers`` and ``progress`` for an ``evaluate_*`` call."""
        return {
            "transform": _transform(model, self.center_crop),
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "progress": sys.stderr.isatty() if self.progress is None else self.progress,
        }

    def finish(self, results: dict[str, Any]) -> None:
        """Print (and write) ``results`` under the model's name; fail when nothing was evaluated."""
        head = {"model": self.name, **({"checkpoint": self.checkpoint} if self.checkpoint else {})}
        _report({**head, **results}, self.json_out)


def _with(options: list[Callable]) -> Callable:
    """Apply a list of click options (first in the list = first in ``--help``)."""

    def decorate(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


_RUN_FIELDS = tuple(f.name for f in fields(EvalRun))


def _common(default_batch: int) -> Callable:
    """Options shared by every subcommand; the decorated function gets them as one ``run: EvalRun``."""

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(**kwargs):
            run = EvalRun(**{k: kwargs.pop(k) for k in _RUN_FIELDS})
            return f(**kwargs, run=run)

        options = [
            click.option(
                "--model",
                "-m",
                "model_name",
                default=None,
                help="Registered model name (`pe models`) or a checkpoint path; default: the bundled model.",
            ),
            click.option(
                "--checkpoint",
                "-c",
                default=None,
                help="Weights: a local file in any supported layout or hf-hub:<repo>[/<file>]; alone, the "
                "config saved beside the file is used.",
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=default_batch,
                show_default=True,
                help="Files per forward pass; the metrics do not depend on it.",
            ),
            click.option(
                "--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ... or auto."
            ),
            click.option(
                "--dtype",
                type=click.Choice(["fp32", "bf16", "fp16"]),
                default="fp32",
                show_default=True,
                help="Compute dtype of the model weights.",
            ),
            click.option(
                "--num-workers",
                type=click.IntRange(min=0),
                default=0,
                show_default=True,
                help="Loader processes.",
            ),
            click.option(
                "--center-crop",
                is_flag=True,
                help="Resize keeping the aspect ratio and crop the centre, instead of squashing to the "
                "model's square size (the reference preprocessing).",
            ),
            click.option(
                "--json",
                "json_out",
                type=click.Path(dir_okay=False, allow_dash=True),
                default=None,
                help="Write the results as JSON to this file ('-': standard output, table on stderr).",
            ),
            click.option(
                "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."
            ),
        ]
        return _with(options)(wrapper)

    return decorate


def _transform(model, center_crop: bool):
    from ..transforms import image_transform

    return image_transform(getattr(model, "visual", model).config.image_size, center_crop=center_crop)


def _report(results: dict[str, Any], json_out: str | None) -> None:
    from rich.console import Console

    from ..eval.report import print_report, write_json

    print_report(results, Console(stderr=json_out == "-"))
    if json_out:
        write_json(results, json_out)
    if results.get("num_evaluated", 0) == 0:
        raise click.ClickException("no file of the dataset could be read; nothing was evaluated")


def _friendly(f: Callable) -> Callable:
    """Bad inputs (missing files, malformed CSVs, wrong model kind) become one-line CLI errors."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except (FileNotFoundError, NotADirectoryError, ValueError, TypeError, IndexError, ImportError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


def _classnames(classnames: str | None, imagenet: bool):
    from ..eval.data import imagenet_classnames, read_classnames

    if classnames and imagenet:
        raise click.UsageError("give --classnames or --imagenet-classnames, not both")
    if imagenet:
        return imagenet_classnames()
    return read_classnames(classnames) if classnames else None


def _templates(templates: str | None):
    from ..eval.data import imagenet_templates, read_templates

    return read_templates(templates) if templates else imagenet_templates()


def _ks(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 1,5,10, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise click.BadParameter(f"recall cut-offs must be >= 1, got {value!r}")
    return ks


_templates_option = click.option(
    "--templates",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Prompt templates, one per line with '{}' (default: the 80 ImageNet templates).",
)
_classnames_option = click.option(
    "--classnames",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Class names, one per line in sorted-folder order, or 'folder<TAB>name' lines "
    "(default: folder names with '_' as spaces).",
)
_imagenet_option = click.option(
    "--imagenet-classnames", is_flag=True, help="Use the bundled 1000 ImageNet class names."
)
_feature_options = [
    click.option(
        "--layer",
        type=int,
        default=None,
        help="Read block k (Python-style index, -1 = last) instead of the pooled embedding.",
    ),
    click.option(
        "--pool",
        type=click.Choice(["pooled", "mean", "cls"]),
        default=None,
        help="pooled: the model's embedding; mean: mean of patch tokens; cls: CLS token "
        "(default: pooled, or mean with --layer).",
    ),
]


def _features(layer: int | None, pool: str | None):
    from ..eval.embed import FeatureSpec

    if pool == "pooled" and layer is not None:
        raise click.UsageError("--layer reads block features: use it with --pool mean or --pool cls")
    pool = pool or ("mean" if layer is not None else "pooled")
    return FeatureSpec(pool=pool, layer=-1 if layer is None else layer)


@click.group(name="eval")
def command() -> None:
    """Zero-shot, retrieval, linear-probe, k-NN and video evaluation on datasets given as files.

    Class folders (ROOT/<class>/<files>) or CSV files (path,label / path,caption); see each subcommand.
    """


@command.command("zeroshot", short_help="Zero-shot classification of images: top-1, top-5, per-class recall.")
@click.argument("data", type=click.Path(exists=True))
@_templates_option
@_classnames_option
@_imagenet_option
@_common(64)
@_friendly
def zeroshot_cmd(
    data,
    templates,
    classnames,
    imagenet_classnames,
    run: EvalRun,
):
    """Zero-shot classification of a class folder or a CSV of path,label: top-1, top-5, mean per-class recall."""
    from ..eval.data import labeled_files
    from ..eval.zeroshot import evaluate_zeroshot

    dataset = labeled_files(data, _classnames(classnames, imagenet_classnames))
    prompts = _templates(templates)
    model = run.load()
    results = evaluate_zeroshot(
        model,
        dataset,
        templates=prompts,
        **run.loader(model),
    )
    run.finish(results)


@command.command("retrieval", short_help="Image-text retrieval from a CSV: recall@k both ways.")
@click.argument("csv_file", metavar="CSV", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--caption-sep", default=None, help="Split each caption cell on this separator (several captions)."
)
@click.option("--recall-at", "recall_at", default="1,5,10", show_default=True, help="Recall cut-offs.")
@_common(64)
@_friendly
def retrieval_cmd(
    csv_file,
    caption_sep,
    recall_at,
    run: EvalRun,
):
    """Image-text retrieval from a CSV of path,caption (repeat a path for several captions): recall@k both ways."""
    from ..eval.data import captions_csv
    from ..eval.retrieval import evaluate_retrieval

    dataset = captions_csv(csv_file, caption_sep)
    ks = _ks(recall_at)
    model = run.load()
    results = evaluate_retrieval(
        model,
        dataset,
        ks=ks,
        **run.loader(model),
    )
    run.finish(results)


@command.command("linear-probe", short_help="Logistic regression on frozen features (train/ and test/).")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@_with(_feature_options)
@click.option(
    "--C",
    "c_values",
    type=click.FloatRange(min=0, min_open=True),
    multiple=True,
    help="Inverse L2 strength C (repeat to choose the best on 20% of train; default 1.0).",
)
@click.option(
    "--max-iter", type=click.IntRange(min=1), default=1000, show_default=True, help="L-BFGS iterations."
)
@_common(64)
@_friendly
def linear_probe_cmd(
    data,
    layer,
    pool,
    c_values,
    max_iter,
    run: EvalRun,
):
    """Logistic regression on frozen features of DATA/train, scored on DATA/test (needs scikit-learn)."""
    from ..eval.data import split_folders
    from ..eval.probe import evaluate_linear_probe, require_sklearn

    require_sklearn()  # fail before the model loads when scikit-learn is missing
    train, test = split_folders(data)
    features = _features(layer, pool)
    model = run.load(vision_only=True)
    results = evaluate_linear_probe(
        model,
        train,
        test,
        features=features,
        c=list(c_values) if len(c_values) > 1 else (c_values[0] if c_values else 1.0),
        max_iter=max_iter,
        **run.loader(model),
    )
    run.finish(results)


@command.command("knn", short_help="Weighted cosine k-NN on frozen features (train/ and test/).")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--k", "k", type=click.IntRange(min=1), default=20, show_default=True, help="Neighbours.")
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=0.07,
    show_default=True,
    help="Vote weight exp(cosine / temperature).",
)
@_with(_feature_options)
@_common(64)
@_friendly
def knn_cmd(
    data,
    k,
    temperature,
    layer,
    pool,
    run: EvalRun,
):
    """Weighted cosine k-NN on frozen features: DATA/train is the memory, DATA/test is scored."""
    from ..eval.data import split_folders
    from ..eval.probe import evaluate_knn

    train, test = split_folders(data)
    features = _features(layer, pool)
    model = run.load(vision_only=True)
    results = evaluate_knn(
        model,
        train,
        test,
        k=k,
        temperature=temperature,
        features=features,
        **run.loader(model),
    )
    run.finish(results)


_frames_option = click.option(
    "--num-frames",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Frames per video, at indices int(i*(T-1)/(N-1)).",
)


@command.command("video-zeroshot", short_help="Zero-shot classification of videos.")
@click.argument("data", type=click.Path(exists=True))
@_templates_option
@_classnames_option
@_frames_option
@_common(8)
@_friendly
def video_zeroshot_cmd(
    data,
    templates,
    classnames,
    num_frames,
    run: EvalRun,
):
    """Zero-shot classification of videos (class folder or CSV of path,label); frame embeddings averaged."""
    from ..eval.data import labeled_files
    from ..eval.video import evaluate_video_zeroshot

    dataset = labeled_files(data, _classnames(classnames, False), videos=True)
    prompts = _templates(templates)
    model = run.load()
    results = evaluate_video_zeroshot(
        model,
        dataset,
        templates=prompts,
        num_frames=num_frames,
        **run.loader(model),
    )
    run.finish(results)


@command.command("video-retrieval", short_help="Video-text retrieval from a CSV: recall@k both ways.")
@click.argument("csv_file", metavar="CSV", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--caption-sep", default=None, help="Split each caption cell on this separator (several captions)."
)
@click.option("--recall-at", "recall_at", default="1,5,10", show_default=True, help="Recall cut-offs.")
@_frames_option
@_common(8)
@_friendly
def video_retrieval_cmd(
    csv_file,
    caption_sep,
    recall_at,
    num_frames,
    run: EvalRun,
):
    """Video-text retrieval from a CSV of path,caption: recall@k both ways (frames normalised, then averaged)."""
    from ..eval.data import captions_csv
    from ..eval.video import evaluate_video_retrieval

    dataset = captions_csv(csv_file, caption_sep)
    ks = _ks(recall_at)
    model = run.load()
    results = evaluate_video_retrieval(
        model,
        dataset,
        num_frames=num_frames,
        ks=ks,
        **run.loader(model),
    )
    run.finish(results)

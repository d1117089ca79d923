"""``pe eval``: zero-shot, retrieval, linear-probe, k-NN and video evaluation from files.

Every subcommand loads a model (``--model`` name or checkpoint path, ``--checkpoint`` weights; default:
the bundled model when one is registered), evaluates, prints a table (``--json``: JSON on standard output)
and optionally writes the JSON result (``--out FILE``). Unreadable files are reported and skipped; the run
fails only when nothing at all could be read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import click

from .options import (
    ModelChoice,
    batch_size_option,
    check_output_file,
    chooses_av_model,
    feature_spec,
    frames_option,
    high_bit_depth_option,
    json_option,
    layer_option,
    modality_option,
    model_options,
    options,
    out_option,
    pool_option,
    progress_option,
    show_progress,
    workers_option,
)
from .output import print_table, report_skipped


@dataclass(frozen=True)
class EvalRun:
    """The options every subcommand shares, and what a subcommand does with them: load the model, hand
    the loader settings to the evaluation, report the results."""

    model_choice: ModelChoice
    batch_size: int
    workers: int
    center_crop: bool
    high_bit_depth: str
    progress: bool | None
    as_json: bool
    out: str | None

    @property
    def name(self) -> str:
        return self.model_choice.label

    def load(self, vision_only: bool = False):
        """The model to evaluate, in eval mode (the shared rules of ``options.load_model``)."""
        return self.model_choice.load(vision_only=vision_only)

    def loader(self, model) -> dict[str, Any]:
        """``transform``, ``batch_size``, ``num_workers`` and ``progress`` for an ``evaluate_*`` call."""
        from ..transforms import image_transform

        size = getattr(model, "visual", model).config.image_size
        return {
            "transform": image_transform(
                size, center_crop=self.center_crop, high_bit_depth=self.high_bit_depth
            ),
            "batch_size": self.batch_size,
            "num_workers": self.workers,
            "progress": show_progress(self.progress),
        }

    def finish(self, results: dict[str, Any]) -> None:
        """Print (and write) ``results`` under the model's name; fail when nothing was evaluated.

        ``--json``: JSON on standard output, the table on standard error; ``--out FILE``: JSON written to
        FILE as well."""
        from ..eval.report import to_json, write_json

        checkpoint = self.model_choice.checkpoint
        head = {"model": self.name, **({"checkpoint": checkpoint} if checkpoint else {})}
        results = {**head, **results}
        print_report(results, err=self.as_json)
        if self.out:
            write_json(results, self.out)
        if self.as_json:
            click.echo(to_json(results))
        if results.get("num_evaluated", 0) == 0:
            raise click.ClickException("no file of the dataset could be read; nothing was evaluated")


def print_report(
    results: dict[str, Any], *, err: bool = False, max_skipped: int = 10, max_classes: int = 20
) -> None:
    """Print the metrics table (and the per-class recalls when there are at most ``max_classes`` classes),
    the notes, then the first ``max_skipped`` skipped files with their reasons; on stderr with ``err``."""
    from ..embedding import Skipped
    from ..eval.report import metrics_rows, per_class_rows

    task = f"pe eval {results.get('task', '').replace('_', '-')}".strip()
    print_table(["metric", "value"], metrics_rows(results), title=task, right=["value"], err=err)
    if 0 < len(results.get("per_class", [])) <= max_classes:
        rows = per_class_rows(results)
        print_table(
            ["class", "samples", "recall"],
            rows,
            title="recall per class",
            right=["samples", "recall"],
            err=err,
        )
    for note in results.get("notes", []):
        click.echo(f"note: {note}", err=err)
    skipped = results.get("skipped", []) + results.get("train_skipped", [])
    report_skipped([Skipped(s["path"], s["reason"]) for s in skipped], limit=max_skipped)


_RUN_FIELDS = tuple(f.name for f in fields(EvalRun))


def _common(default_batch: int) -> Callable:
    """Options shared by every subcommand; the decorated function gets them as one ``run: EvalRun``."""

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(**kwargs):
            run = EvalRun(**{k: kwargs.pop(k) for k in _RUN_FIELDS})
            if run.out:
                check_output_file(run.out, "results file")
            return f(**kwargs, run=run)

        return options(
            model_options,
            batch_size_option(default_batch, "Files per forward pass; the metrics do not depend on it."),
            workers_option,
            click.option(
                "--center-crop",
                is_flag=True,
                help="Resize keeping the aspect ratio and crop the centre, instead of squashing to the "
                "model's square size (the reference preprocessing).",
            ),
            high_bit_depth_option,
            progress_option,
            json_option,
            out_option([".json"], "Also write the results as JSON to this file.", required=False),
        )(wrapper)

    return decorate


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
_feature_options = options(layer_option(), pool_option)


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


@command.command(
    "retrieval",
    short_help="Image-text (or, with PE-AV, audio-text) retrieval from a CSV: recall@k both ways.",
)
@click.argument("csv_file", metavar="CSV", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--caption-sep", default=None, help="Split each caption cell on this separator (several captions)."
)
@click.option("--recall-at", "recall_at", default="1,5,10", show_default=True, help="Recall cut-offs.")
@modality_option
@_common(64)
def retrieval_cmd(
    csv_file,
    caption_sep,
    recall_at,
    modality,
    run: EvalRun,
):
    """Image-text retrieval from a CSV of path,caption (repeat a path for several captions): recall@k both ways.

    With a PE-AV model (--model pe-av-*) the files are audio files or videos: audio-text retrieval (or
    video-text, audio+video-text with --modality), scored by raw dot products as the reference does."""
    from ..eval.data import captions_csv
    from ..eval.retrieval import evaluate_retrieval

    dataset = captions_csv(csv_file, caption_sep)
    ks = _ks(recall_at)
    if chooses_av_model(run.model_choice):
        from ..eval.audio import evaluate_av_retrieval

        results = evaluate_av_retrieval(
            run.load(),
            dataset,
            modality=modality,
            ks=ks,
            batch_size=run.batch_size,
            num_workers=run.workers,
            progress=show_progress(run.progress),
        )
        run.finish(results)
        return
    if modality is not None:
        raise click.BadParameter("--modality applies to PE-AV models (pe-av-*)", param_hint="--modality")
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
@_feature_options
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
    features = feature_spec(layer, pool)
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
@_feature_options
@_common(64)
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
    features = feature_spec(layer, pool)
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


_frames_option = frames_option()


@command.command("video-zeroshot", short_help="Zero-shot classification of videos.")
@click.argument("data", type=click.Path(exists=True))
@_templates_option
@_classnames_option
@_frames_option
@_common(8)
def video_zeroshot_cmd(
    data,
    templates,
    classnames,
    frames,
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
        num_frames=frames,
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
def video_retrieval_cmd(
    csv_file,
    caption_sep,
    recall_at,
    frames,
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
        num_frames=frames,
        ks=ks,
        **run.loader(model),
    )
    run.finish(results)

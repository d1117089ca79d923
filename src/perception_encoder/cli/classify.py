"""``pe classify``: zero-shot probabilities of images (or videos) against comma-separated labels."""

from __future__ import annotations

import json

import click

from .options import (
    batch_size_option,
    check_embedded,
    chooses_av_model,
    find_inputs,
    frames_option,
    high_bit_depth_option,
    json_option,
    modality_option,
    model_options,
    options,
    progress_option,
    require_clip,
    show_progress,
    workers_option,
)
from .output import print_table


def split_labels(labels: str) -> list[str]:
    """``"a, b ,c"`` -> ``["a", "b", "c"]``; no label, or a label given twice, is a usage error (their
    probabilities would share one key in ``--json``)."""
    names = [s.strip() for s in labels.split(",") if s.strip()]
    if not names:
        raise click.BadParameter("give at least one label, e.g. --labels 'cat,dog'", param_hint="--labels")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise click.BadParameter(
            f"{', '.join(map(repr, twice))} given more than once; each label must be distinct",
            param_hint="--labels",
        )
    return names


@click.command("classify")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--labels", "-l", required=True, help='Comma-separated class names, e.g. "cat,dog,car".')
@click.option(
    "--template",
    "-t",
    "templates",
    multiple=True,
    help="Prompt template with {} for the label, repeatable (averaged); default: the label itself.",
)
@click.option(
    "--top", type=click.IntRange(min=1), default=3, show_default=True, help="Labels shown per image."
)
@options(
    model_options,
    batch_size_option(32),
    workers_option,
    frames_option(),
    high_bit_depth_option,
    modality_option,
    progress_option,
    json_option,
)
def command(
    paths,
    labels,
    templates,
    top,
    model_choice,
    batch_size,
    workers,
    frames,
    high_bit_depth,
    modality,
    progress,
    as_json,
):
    """Zero-shot classify images, folders and videos; unreadable or missing files are reported and skipped.

    PE-AV models (--model pe-av-*) classify audio files and videos by their sound, frames or both
    (--modality); probabilities are a softmax over the labels of the model's logits."""
    from ..embedding import embed_paths
    from ..zeroshot import check_template, zero_shot_classifier, zero_shot_probs

    names = split_labels(labels)
    for t in templates:
        try:
            check_template(t)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--template") from None
    if chooses_av_model(model_choice):
        paths_probs = _classify_av(
            paths, names, templates, model_choice, modality, batch_size, workers, progress
        )
        _print(paths_probs, names, top, as_json)
        return
    if modality is not None:
        raise click.BadParameter("--modality applies to PE-AV models (pe-av-*)", param_hint="--modality")
    inputs = find_inputs(paths)
    model = model_choice.load()
    require_clip(model, "classify")
    classifier = zero_shot_classifier(model, names, templates or ("{}",))
    result = embed_paths(
        model,
        inputs.files,
        batch_size=batch_size,
        num_frames=frames,
        high_bit_depth=high_bit_depth,
        num_workers=workers,
        progress=show_progress(progress),
    )
    total = len(inputs.files) + len(inputs.skipped)
    check_embedded(result, total)
    probs = zero_shot_probs(result.embeddings, classifier)
    _print(list(zip(result.paths, probs, strict=True)), names, top, as_json)


def _classify_av(paths, names, templates, model_choice, modality, batch_size, workers, progress):
    """``(path, probabilities)`` of every audio or video file a PE-AV model could read."""
    from ..embedding.av import av_label_probs, embed_av_paths, file_modality, require_av_model

    inputs = find_inputs(paths, audio=True)
    model = model_choice.load()
    try:
        require_av_model(model, "`pe classify` of audio and video")
    except TypeError as exc:
        raise click.ClickException(str(exc)) from None
    result = embed_av_paths(
        model,
        inputs.files,
        modality=modality,
        batch_size=batch_size,
        num_workers=workers,
        progress=show_progress(progress),
    )
    check_embedded(result, len(inputs.files) + len(inputs.skipped))
    kinds = [file_modality(p, modality) for p in result.paths]
    probs = av_label_probs(model, result.embeddings, kinds, names, templates or ("{}",))
    return list(zip(result.paths, probs, strict=True))


def _print(paths_probs, names, top, as_json) -> None:
    """The table (or JSON) of each file's most probable labels."""
    if as_json:
        rows = [
            {"path": str(p), "probs": dict(zip(names, map(float, pr), strict=True))} for p, pr in paths_probs
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    shown = min(top, len(names))
    table = []
    for path, pr in paths_probs:
        best = pr.argsort(descending=True)[:shown].tolist()
        table.append([path, *[f"{names[i]} {100 * pr[i]:.1f}%" for i in best]])
    print_table(["file", *[f"#{i + 1}" for i in range(shown)]], table)

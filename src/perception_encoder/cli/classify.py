"""``pe classify``: zero-shot probabilities of images (or videos) against comma-separated labels."""

from __future__ import annotations

import json

import click

from .common import load_model, model_options, report_skipped, require_clip, split_labels


@click.command("classify")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--labels", "-l", required=True, help='Comma-separated class names, e.g. "cat,dog,car".')
@model_options
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
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True, help="Frames per video.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (every label's probability) instead of a table."
)
def command(
    paths, labels, model_name, checkpoint, device, dtype, templates, top, batch_size, frames, as_json
):
    """Zero-shot classify images, folders and videos; unreadable files are reported and skipped."""
    from ..embedding import embed_paths, expand_inputs
    from ..zeroshot import zero_shot_classifier, zero_shot_probs

    names = split_labels(labels)
    for t in templates:
        if "{}" not in t:
            raise click.BadParameter(f"template {t!r} has no {{}} for the label", param_hint="--template")
    try:
        files = expand_inputs(paths)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    if not files:
        raise click.ClickException("no image or video files found in " + ", ".join(paths))
    model = load_model(model_name, checkpoint, device, dtype)
    require_clip(model, "classify")
    classifier = zero_shot_classifier(model, names, templates or ("{}",))
    result = embed_paths(model, files, batch_size=batch_size, num_frames=frames, progress=len(files) > 8)
    report_skipped(result.skipped)
    if not result.paths:
        raise click.ClickException(f"none of the {len(files)} files could be read")
    probs = zero_shot_probs(result.embeddings, classifier)
    if as_json:
        rows = [
            {"path": str(p), "probs": dict(zip(names, map(float, pr), strict=True))}
            for p, pr in zip(result.paths, probs, strict=True)
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("file", overflow="fold")  # long paths wrap rather than being cut
    for i in range(min(top, len(names))):
        table.add_column(f"#{i + 1}", no_wrap=True)
    for path, pr in zip(result.paths, probs, strict=True):
        best = pr.argsort(descending=True)[:top]
        table.add_row(str(path), *[f"{names[i]} {100 * pr[i]:.1f}%" for i in best.tolist()])
    Console().print(table)

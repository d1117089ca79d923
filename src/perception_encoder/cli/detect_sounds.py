"""``pe detect-sounds``: when a sound is heard, as time spans, with a PE-A-Frame model."""

from __future__ import annotations

import json

import click

from .options import (
    ModelChoice,
    find_inputs,
    json_option,
    model_options,
    options,
    progress_option,
    show_progress,
    workers_option,
)
from .output import print_table, report_skipped

DEFAULT_MODEL = "pe-a-frame-large"


@click.command("detect-sounds")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--prompt",
    "-p",
    "prompts",
    multiple=True,
    required=True,
    help='What to listen for, e.g. "dog barking"; repeatable.',
)
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0),
    default=0.3,
    show_default=True,
    help="A 40 ms frame counts when its probability is above this (the reference's 0.3).",
)
@options(model_options, workers_option, progress_option, json_option)
def command(paths, prompts, threshold, model_choice: ModelChoice, workers, progress, as_json):
    """Time spans where each --prompt is heard in audio files (or videos' sound tracks), one row per span:
    start and end in seconds and the highest frame probability inside. Every 40 ms frame is scored against
    each prompt by a PE-A-Frame model (--model, default pe-a-frame-large); frames above --threshold make
    the spans. Files that cannot be decoded are reported and skipped."""
    from ..av.model import PEAudioFrame
    from ..embedding.av import AVLoader, max_audio_seconds
    from ..embedding.files import Skipped, ordered_map

    texts = [p.strip() for p in prompts]
    if not all(texts):
        raise click.BadParameter("a prompt is empty", param_hint="--prompt")
    if model_choice.name is None and model_choice.checkpoint is None:
        model_choice = ModelChoice(
            DEFAULT_MODEL, None, model_choice.device, model_choice.dtype, model_choice.strict
        )
    inputs = find_inputs(paths, audio=True)
    model = model_choice.load()
    if not isinstance(model, PEAudioFrame):
        raise click.ClickException(
            f"`pe detect-sounds` needs a PE-A-Frame model (pe-a-frame-*), not {type(model).__name__}"
        )
    loader = _SafeLoader(AVLoader("audio", None, None, max_audio_seconds(model)))
    skipped = list(inputs.skipped)
    results = []
    bar = None
    if show_progress(progress):
        from tqdm import tqdm

        bar = tqdm(total=len(inputs.files), desc="audio", unit="file", leave=False)
    for path, (item, reason) in ordered_map(loader, inputs.files, workers):
        if bar is not None:
            bar.update(1)
        if reason is not None:
            skipped.append(Skipped(str(path), reason))
            continue
        spans = model.detect(item.waveform, texts, threshold=threshold)[0]
        results.append((path, item.waveform.numel() / model.config.dac.sampling_rate, spans))
    if bar is not None:
        bar.close()
    report_skipped(skipped[len(inputs.skipped) :])
    if not results:
        raise click.ClickException(
            f"none of the {len(inputs.files) + len(inputs.skipped)} files could be read"
        )
    _print(results, texts, as_json)


class _SafeLoader:
    """path -> ``(item, None)`` or ``(None, reason)``: one bad file never stops the run (picklable)."""

    def __init__(self, load) -> None:
        self.load = load

    def __call__(self, path):
        from ..errors import PEError

        try:
            return self.load(path), None
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # report it and go on
            return None, str(exc) if isinstance(exc, PEError) else f"{type(exc).__name__}: {exc}"


def _print(results, prompts, as_json: bool) -> None:
    if as_json:
        rows = [
            {
                "path": str(path),
                "seconds": round(seconds, 4),
                "spans": {p: [s._asdict() for s in spans[p]] for p in prompts},
            }
            for path, seconds, spans in results
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    table = []
    for path, _, spans in results:
        for p in prompts:
            if not spans[p]:
                table.append([path, p, "-", "-", "-"])
            for s in spans[p]:
                table.append([path, p, f"{s.start:.2f}", f"{s.end:.2f}", f"{s.score:.2f}"])
    print_table(["file", "prompt", "start s", "end s", "peak"], table, right=["start s", "end s", "peak"])

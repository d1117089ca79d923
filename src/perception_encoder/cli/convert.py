"""``pe convert SRC DST --to FORMAT``: rewrite a checkpoint in another layout."""

from __future__ import annotations

import warnings

import click

from .options import DTYPES, check_output_file

_TARGETS = ("reference", "timm", "open_clip", "safetensors")


@click.command("convert")
@click.argument("src")
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option(
    "--to",
    "to",
    type=click.Choice(_TARGETS),
    required=True,
    help="reference: the released .pt layout; timm: timm's vit_pe_* (vision tower only); open_clip: "
    "open_clip's PE-Core (CLIP only); safetensors: this package's layout.",
)
@click.option("--model", "-m", default=None, help="Registered model the checkpoint must fit (checked).")
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default=None,
    help="Cast the weights (default: keep the file's dtype). A bf16 file is the lightest way to run "
    "in bf16: it loads without a cast and its weights are packed in place.",
)
def command(src: str, dst: str, to: str, model: str | None, dtype: str | None) -> None:
    """Convert checkpoint SRC (any layout; a file or an hf-hub: string) into DST.

    DST's extension picks the file type (.safetensors or .pt/.pth/.bin); the model config is written
    beside it as <stem>.json.
    """
    from ..factory import convert, inspect_checkpoint

    check_output_file(dst, "converted checkpoint")
    facts = inspect_checkpoint(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = convert(src, dst, to=to, model=model, dtype=dtype)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    note = ""
    if to == "timm" and facts["kind"] == "clip":
        note = " (timm holds the vision tower only; the text tower was left out)"
    cast = f", {dtype}" if dtype else ""
    click.echo(f"wrote {out} ({to} layout{cast}, from {facts['format']}){note}")

"""``pe info CHECKPOINT``: what a checkpoint file holds, without building a model."""

from __future__ import annotations

import json
import sys

import click


@click.command("info")
@click.argument("checkpoint")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def command(checkpoint: str, as_json: bool) -> None:
    """Describe CHECKPOINT (a .pt / .pth / .bin / .safetensors file, or an hf-hub: string): layout
    (reference, timm, open_clip, native), family, the registered model it matches, dims, depth, patch,
    image size, output dim and parameter count."""
    from ..configs import UnknownModelError
    from ..errors import CheckpointError
    from ..factory import inspect_checkpoint

    try:
        facts = inspect_checkpoint(checkpoint)
    except (CheckpointError, UnknownModelError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    matches = facts["matches"]
    rows = [
        ("file", facts["path"]),
        ("layout", facts["format"]),
        ("kind", "CLIP (vision + text)" if facts["kind"] == "clip" else "vision tower"),
        ("model", " or ".join(matches) if matches else "no registered model (custom)"),
        ("family", facts["family"]),
        ("image size", f"{facts['image_size']} px ({facts['grid_size']}x{facts['grid_size']} patches)"),
        ("patch", str(facts["patch_size"])),
        ("vision width/depth", f"{facts['vision_width']}/{facts['vision_depth']}"),
        ("CLS token", "yes" if facts["cls_token"] else "no"),
        ("LayerScale", "yes" if facts["layer_scale"] else "no"),
        ("pooling", facts["pool"]),
        ("output dim", str(facts["output_dim"]) if facts["output_dim"] else "none (token features)"),
    ]
    if facts["kind"] == "clip":
        rows.append(
            (
                "text width/depth",
                f"{facts['text_width']}/{facts['text_depth']}, context {facts['context_length']}",
            )
        )
    rows += [
        ("parameters", f"{facts['parameters_str']} ({facts['parameters']:,})"),
        ("dtype", facts["dtype"]),
        ("file size", f"{facts['file_size'] / 2**20:.1f} MiB"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console(width=None if sys.stdout.isatty() else 200).print(table)

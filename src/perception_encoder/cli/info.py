"""``pe info CHECKPOINT``: what a checkpoint file holds, without building a model."""

from __future__ import annotations

import json

import click

from .options import json_option
from .output import print_table


@click.command("info")
@click.argument("checkpoint")
@json_option
def command(checkpoint: str, as_json: bool) -> None:
    """Describe CHECKPOINT (a .pt / .pth / .bin / .safetensors file, or an hf-hub: string): layout
    (reference, timm, open_clip, native), family, the registered model it matches, dims, depth, patch,
    image size, output dim and parameter count."""
    from ..factory import inspect_checkpoint

    facts = inspect_checkpoint(checkpoint)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    matches = facts["matches"]
    rows = [
        ("file", facts["path"]),
        ("layout", facts["format"]),
        ("kind", "CLIP (vision + text)" if facts["kind"] == "clip" else "vision tower"),
        ("model", " or ".join(matches) if matches else "no registered model (custom)"),
        (
            "config",
            {"json": "saved with the file", "registry": "registered model", "shapes": "read from shapes"}[
                facts["config_source"]
            ],
        ),
        ("family", facts["family"]),
        ("image size", f"{facts['image_size']} px ({facts['grid_size']}x{facts['grid_size']} patches)"),
        ("patch", str(facts["patch_size"])),
        (
            "vision width/depth/heads",
            f"{facts['vision_width']}/{facts['vision_depth']}/{facts['vision_heads']}",
        ),
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
    print_table(["fact", "value"], rows)

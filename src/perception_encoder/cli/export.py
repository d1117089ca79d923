"""``pe export onnx``: write a model's image, text or video encoder as an ONNX graph."""

from __future__ import annotations

from pathlib import Path

import click

from .options import (
    check_output_file,
    checkpoint_option,
    default_model,
    image_size_option,
    load_model,
    model_option,
    normalize_option,
    out_option,
    strict_option,
)


@click.group("export")
def command() -> None:
    """Export a model to another runtime's format."""


@command.command("onnx")
@model_option
@checkpoint_option
@strict_option
@click.option(
    "--what",
    type=click.Choice(["image", "text", "video"]),
    default="image",
    show_default=True,
    help="Which encoder: pixels (B,3,S,S), token ids (B,L) or frames (B,N,3,S,S).",
)
@out_option([".onnx"], "Output .onnx file [default: <model>-<what>.onnx].", required=False)
@image_size_option
@normalize_option
@click.option("--opset", type=click.IntRange(min=14), default=17, show_default=True, help="ONNX opset.")
@click.option(
    "--external-data/--no-external-data",
    default=None,
    help="Weights in <out>.data beside the graph [default: when over 2 GB].",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Compare onnxruntime with PyTorch (relative error <= 1e-4).",
)
def onnx_command(
    model_name, checkpoint, strict, what, out, image_size, normalize, opset, external_data, check
) -> None:
    """Export one encoder with a dynamic batch (and frame count / text length).

    Example: pe export onnx --model PE-Core-B16-224 --what text -o pe-b16-text.onnx
    """
    from ..export import export_onnx

    if isinstance(image_size, tuple):
        raise click.BadParameter(
            "an exported graph takes square images: give one size S", param_hint="--image-size"
        )
    name = model_name or (Path(checkpoint).stem if checkpoint else default_model())
    target = Path(out) if out else Path(f"{name}-{what}.onnx")
    check_output_file(str(target), "ONNX graph")
    model = load_model(model_name, checkpoint, "cpu", "fp32", vision_only=what != "text", strict=strict)
    path = export_onnx(
        model,
        target,
        what=what,
        image_size=image_size,
        normalize=normalize,
        opset=opset,
        external_data=external_data,
        check=check,
        name=name,
    )
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    extra = f" + {data.name}" if data.is_file() else ""
    checked = ", checked against PyTorch with onnxruntime" if check else ""
    click.echo(f"wrote {path}{extra} ({size / 2**20:.1f} MiB){checked}")

"""``pe export onnx``: write a model's image, text or video encoder as an ONNX graph."""

from __future__ import annotations

from pathlib import Path

import click

from .common import default_model, load_model


@click.group("export")
def command() -> None:
    """Export a model to another runtime's format."""


@command.command("onnx")
@click.option(
    "--model", "-m", "model_name", default=None, help="Registered model name; default: the bundled model."
)
@click.option(
    "--checkpoint", "-c", default=None, help="Weights: a local file in any layout, or hf-hub:<repo>."
)
@click.option(
    "--what",
    type=click.Choice(["image", "text", "video"]),
    default="image",
    show_default=True,
    help="Which encoder: pixels (B,3,S,S), token ids (B,L) or frames (B,N,3,S,S).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output .onnx file [default: <model>-<what>.onnx].",
)
@click.option(
    "--image-size", type=click.IntRange(min=1), default=None, help="Input size S [default: native]."
)
@click.option("--normalize/--no-normalize", default=False, show_default=True, help="L2-normalise the output.")
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
    model_name, checkpoint, what, out, image_size, normalize, opset, external_data, check
) -> None:
    """Export one encoder with a dynamic batch (and frame count / text length).

    Example: pe export onnx --model PE-Core-B16-224 --what text -o pe-b16-text.onnx
    """
    from ..export import export_onnx

    model = load_model(model_name, checkpoint, "cpu", "fp32", vision_only=what != "text")
    name = model_name or (Path(checkpoint).stem if checkpoint else default_model())
    target = Path(out) if out else Path(f"{name}-{what}.onnx")
    try:
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
    except (ValueError, TypeError, ImportError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    extra = f" + {data.name}" if data.is_file() else ""
    checked = ", checked against PyTorch with onnxruntime" if check else ""
    click.echo(f"wrote {path}{extra} ({size / 2**20:.1f} MiB){checked}")

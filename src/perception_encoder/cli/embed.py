"""``pe embed``: images, folders and videos -> an embeddings file (.npy or .parquet)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from .common import load_model, model_options, report_skipped


@click.command("embed")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output .npy or .parquet file."
)
@model_options
@click.option(
    "--layer", type=int, default=None, help="Block index k: pool block k's tokens instead of the embedding."
)
@click.option(
    "--pool",
    type=click.Choice(["mean", "cls"]),
    default="mean",
    show_default=True,
    help="With --layer: mean of the patch tokens, or the CLS token.",
)
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--frames",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Frames sampled per video (one row per video: the mean of its frame embeddings).",
)
@click.option("--normalize/--no-normalize", default=False, show_default=True, help="L2-normalise each row.")
@click.option(
    "--backend",
    type=click.Choice(["torch", "onnxruntime"]),
    default="torch",
    show_default=True,
    help="Run the image encoder in PyTorch, or as an exported ONNX graph in onnxruntime (CPU, float32).",
)
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="With --backend onnxruntime: the image graph to run (pe export onnx --what image) "
    "[default: export the model to a temporary graph first].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Data-loader worker processes decoding files while the model encodes.",
)
def command(
    paths,
    out,
    model_name,
    checkpoint,
    device,
    dtype,
    layer,
    pool,
    batch_size,
    frames,
    normalize,
    backend,
    onnx_path,
    workers,
):
    """Embed images, folders (recursively) and video files; unreadable files are reported and skipped.

    .npy output gets a sidecar <name>.paths.txt with one file name per row; .parquet output has columns
    path and embedding.
    """
    from ..embedding import expand_inputs, save_embeddings

    if not out.endswith((".npy", ".parquet")):
        raise click.BadParameter(f"{out!r} must end in .npy or .parquet", param_hint="--out")
    try:
        files = expand_inputs(paths)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    if not files:
        raise click.ClickException("no image or video files found in " + ", ".join(paths))
    if onnx_path and backend != "onnxruntime":
        raise click.BadParameter("--onnx needs --backend onnxruntime", param_hint="--onnx")
    if backend == "onnxruntime" and (dtype != "fp32" or (device or "cpu") != "cpu"):
        raise click.BadParameter(
            "the onnxruntime backend runs float32 on the CPU: drop --dtype / --device", param_hint="--backend"
        )
    with tempfile.TemporaryDirectory(prefix="pe-embed-") as tmp:
        if backend == "onnxruntime":
            model = _onnx_encoder(onnx_path, model_name, checkpoint, Path(tmp))
        else:
            model = load_model(model_name, checkpoint, device, dtype)
        result = _embed(model, files, layer, pool, batch_size, frames, normalize, workers)
    report_skipped(result.skipped)
    if not result.paths:
        raise click.ClickException(f"none of the {len(files)} files could be embedded")
    written = save_embeddings(result, out)
    click.echo(
        f"embedded {len(result.paths)} of {len(files)} files, dim {result.embeddings.shape[1]} -> "
        + ", ".join(map(str, written))
    )


def _onnx_encoder(onnx_path, model_name, checkpoint, tmp: Path):
    """The onnxruntime encoder: the given graph, or the model exported to ``tmp`` first."""
    from ..export import OnnxEncoder, export_onnx

    try:
        if onnx_path is None:
            model = load_model(model_name, checkpoint, "cpu", "fp32", vision_only=True)
            onnx_path = export_onnx(model, tmp / "image.onnx", what="image", check=False)
            del model
        return OnnxEncoder(onnx_path)
    except (ImportError, ValueError, TypeError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"onnxruntime backend: {exc}") from exc


def _embed(model, files, layer, pool, batch_size, frames, normalize, workers):
    from ..embedding import embed_paths

    try:
        return embed_paths(
            model,
            files,
            batch_size=batch_size,
            layer=layer,
            pool=pool,
            num_frames=frames,
            normalize=normalize,
            num_workers=workers,
            progress=True,
        )
    except (IndexError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc

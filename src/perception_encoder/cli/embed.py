"""``pe embed``: images, folders and videos -> an embeddings file (.npy + names, or .parquet)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from .options import (
    batch_size_option,
    check_embedded,
    feature_spec,
    find_inputs,
    frames_option,
    high_bit_depth_option,
    image_size_option,
    layer_option,
    model_options,
    normalize_option,
    options,
    out_option,
    pool_option,
    progress_option,
    show_progress,
    workers_option,
)


@click.command("embed")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@options(
    out_option([".npy", ".parquet"], "Output .npy (+ <name>.paths.txt) or .parquet file."),
    model_options,
    layer_option(),
    pool_option,
    batch_size_option(32),
    workers_option,
    frames_option(),
    normalize_option,
    image_size_option,
    high_bit_depth_option,
    progress_option,
    show_progress,
)
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
def command(
    paths,
    out,
    model_choice,
    layer,
    pool,
    batch_size,
    workers,
    frames,
    normalize,
    image_size,
    high_bit_depth,
    progress,
    backend,
    onnx_path,
):
    """Embed images, folders (recursively) and video files; unreadable or missing files are reported and
    skipped, and a run that cannot write its output stops before the work.

    .npy output gets a sidecar <name>.paths.txt with one file name per row; .parquet output has columns
    path and embedding. Names with a newline, a backslash or bytes that are not UTF-8 are escaped
    (\\n, \\\\, \\xNN), so every row keeps its name. A video row is the mean of its frame embeddings
    (each frame normalised first with --normalize, and the mean normalised too).
    """
    from ..embedding import check_output, embed_paths, save_embeddings

    spec = feature_spec(layer, pool)
    if onnx_path and backend != "onnxruntime":
        raise click.BadParameter("--onnx needs --backend onnxruntime", param_hint="--onnx")
    if backend == "onnxruntime" and (
        model_choice.dtype != "fp32" or model_choice.device not in ("auto", "cpu")
    ):
        raise click.BadParameter(
            "the onnxruntime backend runs float32 on the CPU: drop --dtype / --device", param_hint="--backend"
        )
    check_output(out)  # before the work: a place that cannot be written fails now, not after an hour
    inputs = find_inputs(paths)
    with tempfile.TemporaryDirectory(prefix="pe-embed-") as tmp:
        if backend == "onnxruntime":
            model = _onnx_encoder(onnx_path, model_choice, Path(tmp))
        else:
            model = model_choice.load()
        result = embed_paths(
            model,
            inputs.files,
            batch_size=batch_size,
            features=spec,
            num_frames=frames,
            normalize=normalize,
            image_size=image_size,
            high_bit_depth=high_bit_depth,
            num_workers=workers,
            progress=show_progress(progress),
        )
    total = len(inputs.files) + len(inputs.skipped)
    check_embedded(result, total)
    written = save_embeddings(result.embeddings, result.paths, out)
    click.echo(
        f"embedded {len(result.paths)} of {total} files, dim {result.embeddings.shape[1]} -> "
        + ", ".join(map(str, written))
    )


def _onnx_encoder(onnx_path, model_choice, tmp: Path):
    """The onnxruntime encoder: the given graph, or the model exported to ``tmp`` first."""
    from ..export import OnnxEncoder, export_onnx

    if onnx_path is None:
        model = model_choice.load(vision_only=True, device="cpu", dtype="fp32")
        onnx_path = export_onnx(model, tmp / "image.onnx", what="image", check=False)
        del model
    return OnnxEncoder(onnx_path)

"""``pe embed``: images, folders and videos -> an embeddings file (.npy + names, or .parquet)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from .options import (
    backend_option,
    batch_size_option,
    check_embedded,
    chooses_av_model,
    default_model,
    feature_spec,
    find_inputs,
    frames_option,
    high_bit_depth_option,
    image_size_option,
    layer_option,
    modality_option,
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
    out_option(
        [],
        "Output: a folder for an embedding dataset (sharded Parquet + manifest.json, resumable), or one "
        ".npy (+ <name>.paths.txt) / .parquet file for a small run.",
        kind="either",
    ),
    model_options,
    layer_option(),
    pool_option,
    batch_size_option(32),
    workers_option,
    frames_option(),
    normalize_option,
    image_size_option,
    high_bit_depth_option,
    modality_option,
    progress_option,
)
@backend_option(
    "Run the image encoder in PyTorch, or as an exported ONNX graph in onnxruntime (CPU, float32)."
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
    "--shard-size",
    type=click.IntRange(1, 100_000_000),
    default=None,
    help="Dataset: inputs per shard [default: about 256 MB of embeddings per shard].",
)
@click.option("--half", is_flag=True, help="Dataset: store embeddings as float16.")
@click.option(
    "--overwrite", is_flag=True, help="Dataset: start afresh in a dataset made with other settings."
)
@click.option("--image-column", default=None, help="Tables: the column of paths, URLs or image bytes.")
@click.option(
    "--id-column", default=None, help="Tables: the column of row ids [default: id/key, else the row number]."
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Dataset: run on this machine, or on a Ray cluster (pip install -e '.[ray]').",
)
@click.option(
    "--ray-address", default=None, help="Ray cluster to join [default: RAY_ADDRESS, else a local one]."
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Ray: model replicas [default: 1 per GPU, else 1].",
)
@click.option(
    "--gpus-per-replica",
    type=click.FloatRange(0, 64),
    default=0.0,
    show_default=True,
    help="Ray: GPUs per model replica.",
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
    modality,
    progress,
    backend,
    onnx_path,
    shard_size,
    half,
    overwrite,
    image_column,
    id_column,
    engine,
    ray_address,
    replicas,
    gpus_per_replica,
):
    """Embed images, folders (recursively) and video files; unreadable or missing files are reported and
    skipped, and a run that cannot write its output stops before the work.

    .npy output gets a sidecar <name>.paths.txt with one file name per row; .parquet output has columns
    path and embedding. Names with a newline, a backslash or bytes that are not UTF-8 are escaped
    (\\n, \\\\, \\xNN), so every row keeps its name. A video row is the mean of its frame embeddings
    (each frame normalised first with --normalize, and the mean normalised too).

    PE-AV models (--model pe-av-*) embed audio files and videos instead: a row per file from its sound,
    its frames or both (--modality), into a .npy or .parquet file.
    """
    from ..embedding import check_output, embed_paths

    spec = feature_spec(layer, pool)
    if chooses_av_model(model_choice):
        dataset_only = {"--shard-size": shard_size, "--half": half, "--overwrite": overwrite}
        _embed_av(
            paths,
            out,
            model_choice,
            modality=modality,
            refused={
                "--layer": layer is not None,
                "--pool": pool is not None,
                "--backend onnxruntime": backend != "torch",
                "--onnx": onnx_path is not None,
                "--engine ray": engine == "ray",
                **{name: bool(value) for name, value in dataset_only.items()},
            },
            batch_size=batch_size,
            workers=workers,
            normalize=normalize,
            progress=progress,
        )
        return
    if modality is not None:
        raise click.BadParameter("--modality applies to PE-AV models (pe-av-*)", param_hint="--modality")
    if not out.lower().endswith((".npy", ".parquet")):
        if Path(out).suffix and not Path(out).is_dir():
            raise click.BadParameter(
                f"{out!r}: give a folder for a dataset, or a file ending with .npy or .parquet",
                param_hint="--out",
            )
        if backend != "torch":
            raise click.BadParameter("datasets are embedded with the torch backend", param_hint="--backend")
        _embed_dataset(
            paths,
            out,
            model_choice,
            spec,
            batch_size=batch_size,
            num_workers=workers,
            num_frames=frames,
            normalize=normalize,
            image_size=image_size,
            high_bit_depth=high_bit_depth,
            progress=show_progress(progress),
            shard_size=shard_size,
            half=half,
            overwrite=overwrite,
            image_column=image_column,
            id_column=id_column,
            engine=engine,
            engine_options={
                "address": ray_address,
                "replicas": replicas,
                "gpus_per_replica": gpus_per_replica,
            }
            if engine == "ray"
            else {},
        )
        return
    dataset_only = {
        "--shard-size": shard_size,
        "--half": half,
        "--overwrite": overwrite,
        "--image-column": image_column,
        "--id-column": id_column,
        "--engine ray": engine == "ray",
    }
    given = [name for name, value in dataset_only.items() if value]
    if given:
        raise click.BadParameter(
            f"{', '.join(given)} apply to a dataset folder, not a single file", param_hint="--out"
        )
    _refuse_collections(paths)
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
    _write(result, inputs, out)


def _embed_av(paths, out, model_choice, *, modality, refused, batch_size, workers, normalize, progress):
    """``pe embed`` with a PE-AV model: audio files and videos -> one .npy / .parquet file."""
    from ..embedding import check_output
    from ..embedding.av import embed_av_paths

    given = [name for name, on in refused.items() if on]
    if given:
        raise click.BadParameter(f"{', '.join(given)} do not apply to PE-AV models", param_hint="options")
    if not out.lower().endswith((".npy", ".parquet")):
        raise click.BadParameter(
            f"{out!r}: PE-AV embeddings are written to a .npy or .parquet file", param_hint="--out"
        )
    _refuse_collections(paths)
    check_output(out)
    inputs = find_inputs(paths, audio=True)
    model = model_choice.load()
    result = embed_av_paths(
        model,
        inputs.files,
        modality=modality,
        batch_size=batch_size,
        normalize=normalize,
        num_workers=workers,
        progress=show_progress(progress),
    )
    _write(result, inputs, out)


def _write(result, inputs, out: str) -> None:
    """Write one run's embeddings to ``out`` (after checking that something was embedded) and say so."""
    from ..embedding import save_embeddings

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


def _refuse_collections(paths) -> None:
    """A single-file output takes files and folders; tars, tables, globs and URLs make a dataset."""
    for p in paths:
        lowered = str(p).lower()
        if "://" in lowered or any(c in str(p) for c in "*?[{") or lowered.endswith((".tar", ".csv", ".tsv")):
            raise click.BadParameter(
                f"{p}: tars, tables, globs and URLs are embedded into a dataset: give --out a folder",
                param_hint="PATHS",
            )


def _embed_dataset(paths, out, model_choice, spec, *, engine_options, **options) -> None:
    """``pe embed ... --out DIR``: the dataset job, then its summary."""
    from ..datasets.embed import embed_dataset
    from .options import pick_device

    name = model_choice.name or model_choice.checkpoint or default_model()
    checkpoint = model_choice.checkpoint if model_choice.name else None
    summary = embed_dataset(
        list(paths),
        out,
        model=name,
        checkpoint=checkpoint,
        device=pick_device(model_choice.device),
        dtype=model_choice.dtype,
        features=spec,
        **options,
        **engine_options,
    )
    kept = f", {summary.shards_kept} kept from before" if summary.shards_kept else ""
    click.echo(
        f"{summary.root}: {summary.rows} rows, {summary.skipped} skipped, {summary.shards_written} shard(s) "
        f"written{kept} in {summary.seconds:.1f} s"
    )
    if summary.skipped:
        click.echo(f"skipped inputs and their reasons: {summary.root / 'skipped'}", err=True)

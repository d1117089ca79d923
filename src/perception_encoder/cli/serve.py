"""``pe serve``: the HTTP service (``perception_encoder.serve``): embeddings, classification, features and,
with ``--index DATASET``, search and its page, with dynamic batching, limits and an optional API key."""

from __future__ import annotations

import dataclasses
import os

import click

from .options import backend_option, frames_option, model_options, options


@click.command("serve")
@options(model_options)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one)."
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one)."
)
@click.option(
    "--api-key",
    envvar="PE_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on every API route (env PE_API_KEY).",
)
@backend_option("torch: the model of --model / --checkpoint; onnxruntime: the graphs of --onnx.")
@click.option(
    "--onnx",
    "onnx_graphs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="An ONNX graph from `pe export onnx` (an image graph, and a text graph for text): --backend onnxruntime.",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(1, 4096),
    default=32,
    show_default=True,
    help="Items per model batch.",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(0, 10_000),
    default=5.0,
    show_default=True,
    help="How long the first item of a batch waits for others.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(1, 1 << 24),
    default=1024,
    show_default=True,
    help="Items per modality admitted and not yet in a batch; beyond it requests get 429.",
)
@click.option(
    "--max-items", type=click.IntRange(1, 1 << 20), default=256, show_default=True, help="Items per request."
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(0.01, 1 << 20),
    default=32.0,
    show_default=True,
    help="Largest request body.",
)
@click.option(
    "--max-image-pixels",
    type=click.IntRange(1, 1 << 40),
    default=40_000_000,
    show_default=True,
    help="Most pixels of an image or a video frame, checked before decoding.",
)
@frames_option(8)
@click.option(
    "--index",
    "index_dataset",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="An indexed dataset (pe embed --out DIR; pe index DIR) for /v1/search and the page at /; the model "
    "defaults to the dataset's.",
)
@click.option("--allow-urls", is_flag=True, help="Fetch http(s) image URLs (public addresses only).")
@click.option(
    "--allow-private-urls", is_flag=True, help="With --allow-urls: also private and local addresses."
)
@click.option(
    "--url-timeout",
    type=click.FloatRange(0.1, 300),
    default=10.0,
    show_default=True,
    help="Seconds per fetch.",
)
@click.option(
    "--decode-threads",
    type=click.IntRange(1, 256),
    default=min(4, os.cpu_count() or 1),
    show_default=True,
    help="Threads decoding images and videos beside the model.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0, 3600),
    default=30.0,
    show_default=True,
    help="On SIGTERM, seconds the requests in flight may take to finish.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1, 1 << 20),
    default=1024,
    show_default=True,
    help="Open connections at most; beyond them uvicorn answers 503.",
)
@click.option("--access-log", is_flag=True, help="Log every request.")
def command(
    model_choice,
    host,
    port,
    api_key,
    backend,
    onnx_graphs,
    max_batch_size,
    max_wait_ms,
    max_queue,
    max_items,
    max_body_mb,
    max_image_pixels,
    frames,
    index_dataset,
    allow_urls,
    allow_private_urls,
    url_timeout,
    decode_threads,
    drain_timeout,
    max_connections,
    access_log,
):
    """Serve embeddings over HTTP: POST /v1/embeddings (OpenAI's shape; text, images, videos),
    /v1/classify, /v1/features, /v1/search (with --index) and the search page at /; GET /v1/models,
    /health, /ready, /metrics. Concurrent requests are batched; SIGTERM drains the requests in flight."""
    from ..serve import Backend, ServeConfig, Service, create_app, listening_socket, run_server

    if allow_private_urls and not allow_urls:
        raise click.UsageError("--allow-private-urls needs --allow-urls")
    if backend == "onnxruntime":
        if index_dataset:
            raise click.UsageError(
                "--index needs --backend torch: search queries go through the dataset's model, whose weights are "
                "checked against its manifest"
            )
        if model_choice.name or model_choice.checkpoint:
            raise click.UsageError(
                "--backend onnxruntime serves the --onnx graphs; --model / --checkpoint are for torch"
            )
        if not onnx_graphs:
            raise click.UsageError("--backend onnxruntime needs --onnx IMAGE.onnx [--onnx TEXT.onnx]")
    elif onnx_graphs:
        raise click.UsageError("--onnx graphs are served with --backend onnxruntime")
    config = ServeConfig(
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_items=max_items,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        max_image_pixels=max_image_pixels,
        frames=frames,
        allow_urls=allow_urls,
        allow_private_urls=allow_private_urls,
        url_timeout=url_timeout,
        api_key=api_key or None,
        decode_threads=decode_threads,
    )
    sock = listening_socket(host, port)  # before loading: a taken port fails at once
    try:
        if backend == "onnxruntime":
            served = Backend.from_onnx(onnx_graphs, frame_batch_size=max_batch_size)
            service = Service(served, config)
        else:
            model_choice = _with_dataset_model(model_choice, index_dataset)
            model = model_choice.load()
            served = Backend.from_torch(
                model, _served_name(model_choice.label), frame_batch_size=max_batch_size
            )
            search = None
            if index_dataset:
                search = _search_index(index_dataset, model, model_choice, config)
            service = Service(served, config, search=search)
    except BaseException:
        sock.close()
        raise
    app = create_app(service)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host

    def started() -> None:
        click.echo(f"pe serve: {served.name} on http://{shown}:{bound_port}", err=True)

    if config.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.secho(
            f"warning: listening on {host} without --api-key: anyone who can reach it may use it",
            fg="yellow",
            err=True,
        )
    run_server(
        app,
        sock,
        drain_timeout=drain_timeout,
        max_connections=max_connections,
        access_log=access_log,
        on_started=started,
    )


def _with_dataset_model(choice, dataset: str | None):
    """With ``--index`` and no ``--model`` / ``--checkpoint``: the model the dataset's manifest names."""
    if dataset is None or choice.name or choice.checkpoint:
        return choice
    from ..datasets import open_dataset

    name, checkpoint = open_dataset(dataset).settings.weights()
    return dataclasses.replace(choice, name=name, checkpoint=checkpoint)


def _served_name(label: str) -> str:
    """The model id clients see: a registered name as is, a checkpoint file by its name without suffix."""
    from ..configs import list_models

    return (
        label if label in list_models() else os.path.splitext(os.path.basename(label.rstrip("/")))[0] or label
    )


def _search_index(dataset: str, model, choice, config):
    """The dataset's index, after checking the server's weights are the manifest's."""
    from ..datasets import open_dataset
    from ..serve import SearchIndex

    ds = open_dataset(dataset)
    name, checkpoint = (choice.checkpoint, None) if choice.name is None else (choice.name, choice.checkpoint)
    ds.check_weights(name or choice.label, checkpoint)
    if ds.settings.dtype != choice.dtype:
        click.secho(
            f"warning: {dataset} was embedded in {ds.settings.dtype}, the server runs {choice.dtype}: scores may "
            "differ slightly from the rows' own",
            fg="yellow",
            err=True,
        )
    return SearchIndex(
        dataset, model, max_pixels=config.max_image_pixels, thumbnail_size=config.thumbnail_size
    )

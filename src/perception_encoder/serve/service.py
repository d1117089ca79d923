"""What the routes do, without HTTP: ``Service`` holds the backend, one ``Batcher`` per modality, the decode
pool and the search index, and answers each request as a JSON-ready dict.

A request is checked first (limits, fields), then admitted by its batcher (429 when full), then its items
are decoded in the decode pool (threads: Pillow and PyAV release the GIL), then submitted to the batcher,
whose batches run on the one model thread. A bad item fails its request with 4xx naming it; nothing a
request sends reaches the model undecoded.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import decimal
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..tokenization import tokenizer as make_tokenizer
from ..zeroshot import classifier_from_prompts, zero_shot_probs, zero_shot_prompts
from .backend import Backend, FeatureItem
from .batcher import Batcher
from .config import ServeConfig
from .errors import APIError, bad_item
from .inputs import Decoder, is_data_uri
from .limits import as_items, check_labels, check_text
from .metrics import Metrics
from .schemas import ClassifyRequest, EmbeddingRequest, FeaturesRequest, SearchRequest
from .search import SearchIndex

log = logging.getLogger("perception_encoder.serve")

#: Zero-shot classifiers kept (label set x templates), so a client asking again skips the text tower.
CLASSIFIER_CACHE = 64


class Service:
    """The server's state and operations; ``start`` / ``stop`` run on the event loop (the app's lifespan)."""

    def __init__(self, backend: Backend, config: ServeConfig, *, search: SearchIndex | None = None) -> None:
        self.backend = backend
        self.config = config
        self.search_index = search
        self.metrics = Metrics()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="pe-model")
        self.decode_pool = ThreadPoolExecutor(
            config.decode_threads, thread_name_prefix="pe-decode", initializer=_decode_thread
        )
        self.decoder = Decoder(config, backend.image_size)
        self.tokenizer = make_tokenizer(backend.context_length) if backend.context_length else None
        runs: dict[str, Callable[[list[Any]], Sequence[Any]]] = {
            "image": backend.embed_media,
            "video": backend.embed_media,
        }
        if backend.has_text:
            runs["text"] = backend.embed_texts
        if backend.model is not None:
            runs["features"] = backend.features
            from ..dense.features import resolve_image_size
            from ..embedding import vision_tower
            from ..transforms import image_transform

            self.feature_transform = image_transform(resolve_image_size(vision_tower(backend.model), None))
        if search is not None:
            runs["search"] = search.embed
        self.batchers = {
            modality: Batcher(
                modality,
                run,
                self.model_thread,
                max_batch_size=config.max_batch_size,
                max_wait_s=config.max_wait_s,
                max_queue=config.max_queue,
                observe=self.metrics.observe_batch,
            )
            for modality, run in runs.items()
        }
        self.state = "starting"  # then "warming up", "ready" (or "failed"), "draining"
        self._warming: asyncio.Task | None = None
        self._classifiers: OrderedDict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = OrderedDict()

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        for modality, batcher in self.batchers.items():
            batcher.start()
            self.metrics.track_depth(modality, lambda b=batcher: b.depth)
        self.state = "warming up"
        self._warming = asyncio.get_running_loop().create_task(self._warm_up())

    async def _warm_up(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self.model_thread, self.backend.warm_up)
        except Exception:
            log.exception("warm-up failed: the server stays not ready")
            self.state = "failed"
            return
        self.state = "ready"

    async def stop(self) -> None:
        """After the server drained its requests: stop the batchers and the threads."""
        self.state = "draining"
        if self._warming is not None:  # None: stopped before it started
            self._warming.cancel()
        for batcher in self.batchers.values():
            await batcher.stop()
        self.model_thread.shutdown(wait=True, cancel_futures=True)
        self.decode_pool.shutdown(wait=True, cancel_futures=True)

    # --- checks shared by the routes -----------------------------------------------------------------------

    def check_ready(self) -> None:
        if self.state != "ready":
            raise APIError(
                503,
                f"the server is {self.state}; retry shortly",
                code="not_ready",
                headers={"Retry-After": "1"},
            )

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.backend.name:
            raise APIError(
                404,
                f"model {requested!r} is not served here; this server serves {self.backend.name!r} (GET /v1/models)",
                code="model_not_found",
                param="model",
            )

    def _require_text(self, what: str) -> None:
        if "text" not in self.batchers:
            raise APIError(
                400, f"{what} needs a text tower; {self.backend.name} has none", code="no_text_tower"
            )

    async def _decode(self, fn: Callable[[str, str], Any], items: list[str], params: list[str]) -> list[Any]:
        """``fn(item, param)`` for every item in the decode pool; the first failure in input order is raised."""
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(
                loop.run_in_executor(self.decode_pool, fn, item, p)
                for item, p in zip(items, params, strict=True)
            ),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def _run_in_pool(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)

    # --- /v1/embeddings ------------------------------------------------------------------------------------

    async def embed(self, req: EmbeddingRequest) -> dict[str, Any]:
        self.check_ready()
        self.check_model(req.model)
        if req.dimensions is not None:
            raise APIError(
                400,
                f"dimensions is not supported: {self.backend.name} gives {self.backend.embed_dim}-dimensional "
                "embeddings and PE models are not trained to be cut shorter (the similarities would change); "
                "omit dimensions",
                code="dimensions_not_supported",
                param="dimensions",
            )
        items = as_items(req.input, "input", self.config.max_items)
        params = _params("input", req.input)
        modality = req.modality or "text"
        if req.modality is None:
            for item, p in zip(items, params, strict=True):
                if is_data_uri(item):
                    raise bad_item(
                        p, 'is a data URI: set "modality" to "image" or "video"', "modality_missing"
                    )
        usage = 0
        truncated: list[bool] | None = None
        if modality == "text":
            self._require_text("text embedding")
            texts = [check_text(t, p, self.config.max_text_chars) for t, p in zip(items, params, strict=True)]
            with self.batchers["text"].reserve(len(texts)) as slot:
                counts = await self._run_in_pool(lambda: [len(self.tokenizer.encode(t)) + 2 for t in texts])
                vectors = await slot.submit(texts)
            context = self.backend.context_length
            truncated = [n > context for n in counts]
            usage = sum(min(n, context) for n in counts)
        else:
            decode = self.decoder.pixels if modality == "image" else self.decoder.video
            with self.batchers[modality].reserve(len(items)) as slot:
                pixels = await self._decode(decode, items, params)
                vectors = await slot.submit(pixels)
        data = []
        for i, v in enumerate(vectors):
            row: dict[str, Any] = {
                "object": "embedding",
                "index": i,
                "embedding": _encode(v, req.encoding_format),
            }
            if truncated is not None:
                row["truncated"] = truncated[i]
            data.append(row)
        out: dict[str, Any] = {
            "object": "list",
            "model": self.backend.name,
            "modality": modality,
            "data": data,
            "usage": {"prompt_tokens": usage, "total_tokens": usage},
        }
        if truncated and any(truncated):
            cut = [p for p, t in zip(params, truncated, strict=True) if t]
            out["warnings"] = [
                f"{', '.join(cut)}: longer than the model's {self.backend.context_length} tokens; cut as the "
                "tokenizer does (the last kept token is the end of text)"
            ]
        return out

    # --- /v1/classify --------------------------------------------------------------------------------------

    async def classify(self, req: ClassifyRequest) -> dict[str, Any]:
        self.check_ready()
        self.check_model(req.model)
        self._require_text("zero-shot classification")
        items = as_items(req.input, "input", self.config.max_items)
        params = _params("input", req.input)
        labels, templates = list(req.labels), list(req.templates) if req.templates is not None else ["{}"]
        check_labels(labels, templates, self.config.max_labels, self.config.max_prompts)
        for field, values in (("labels", labels), ("templates", templates)):
            for i, value in enumerate(values):
                check_text(value, f"{field}[{i}]", self.config.max_text_chars)
        with self.batchers["image"].reserve(len(items)) as slot:
            pixels = await self._decode(self.decoder.pixels, items, params)
            classifier = await self._classifier(labels, templates)
            vectors = await slot.submit(pixels)
        probs = zero_shot_probs(torch.stack(vectors), classifier)
        data = []
        for i, p in enumerate(probs.tolist()):
            best = max(range(len(labels)), key=p.__getitem__)
            data.append(
                {
                    "index": i,
                    "label": labels[best],
                    "score": p[best],
                    "probs": dict(zip(labels, p, strict=True)),
                }
            )
        return {
            "object": "list",
            "model": self.backend.name,
            "labels": labels,
            "templates": templates,
            "data": data,
        }

    async def _classifier(self, labels: list[str], templates: list[str]) -> torch.Tensor:
        """``(D, C)``: the prompts through the text batcher (in slices of at most ``max_items``, each admitted
        as a request's items are), cached by label set and templates."""
        key = (tuple(labels), tuple(templates))
        cached = self._classifiers.get(key)
        if cached is not None:
            self._classifiers.move_to_end(key)
            return cached
        prompts = zero_shot_prompts(labels, templates)
        step = self.config.max_items
        vectors: list[torch.Tensor] = []
        for i in range(0, len(prompts), step):
            vectors += await self.batchers["text"].submit(prompts[i : i + step])
        classifier = classifier_from_prompts(torch.stack(vectors), len(labels))
        self._classifiers[key] = classifier
        while len(self._classifiers) > CLASSIFIER_CACHE:
            self._classifiers.popitem(last=False)
        return classifier

    # --- /v1/features --------------------------------------------------------------------------------------

    async def features(self, req: FeaturesRequest) -> dict[str, Any]:
        self.check_ready()
        self.check_model(req.model)
        if "features" not in self.batchers:
            raise APIError(
                400,
                "features need the torch backend: an exported ONNX graph gives the final embedding only",
                code="features_unsupported",
            )
        from ..embedding import vision_tower
        from ..layers.transformer import resolve_layer

        try:
            resolve_layer(req.layer, vision_tower(self.backend.model).depth)
        except IndexError as e:
            raise APIError(400, f"layer: {e}", code="invalid_layer", param="layer") from None
        items = as_items(req.input, "input", self.config.max_items)
        params = _params("input", req.input)
        if req.output == "patch":

            def decode(item: str, param: str) -> torch.Tensor:  # as dense.patch_features reads an image
                return self.decoder.rgb_pixels(item, param, self.feature_transform)

        else:
            decode = self.decoder.pixels  # as pe embed --layer L reads it
        with self.batchers["features"].reserve(len(items)) as slot:
            pixels = await self._decode(decode, items, params)
            values = await slot.submit([FeatureItem(x, req.layer, req.output) for x in pixels])
        data = []
        for i, v in enumerate(values):
            data.append(
                {
                    "index": i,
                    "shape": list(v.shape),
                    "dtype": "float16",
                    "features": base64.b64encode(v.numpy().astype("<f2").tobytes()).decode("ascii"),
                }
            )
        return {
            "object": "list",
            "model": self.backend.name,
            "layer": req.layer,
            "output": req.output,
            "data": data,
        }

    # --- /v1/search ----------------------------------------------------------------------------------------

    def require_index(self) -> SearchIndex:
        if self.search_index is None:
            raise APIError(
                404,
                "this server has no index: start it with --index DATASET (pe embed --out + pe index)",
                code="no_index",
            )
        return self.search_index

    async def search(self, req: SearchRequest) -> dict[str, Any]:
        index = self.require_index()
        self.check_ready()
        if (req.text is None) == (req.image is None):
            raise APIError(400, "give exactly one query: text or image", code="invalid_query", param="text")
        if not 1 <= req.k <= self.config.max_k:
            raise APIError(
                400, f"k must be from 1 to {self.config.max_k:,}, got {req.k}", code="invalid_k", param="k"
            )
        from ..index import VectorIndexError

        try:
            await self._run_in_pool(index.index.check_filter, req.where)
        except VectorIndexError as e:
            raise APIError(400, f"where: {e}", code="invalid_filter", param="where") from None
        if req.text is not None:
            if not index.accepts_text:
                raise APIError(
                    400,
                    f"{index.dataset.root} holds {index.dataset.features.describe()}s: query it with an image",
                    code="text_query_unsupported",
                    param="text",
                )
            text = check_text(req.text, "text", self.config.max_text_chars)
            (vector,) = await self.batchers["search"].submit([("text", text)])
            shown: dict[str, Any] = {"text": req.text}
        else:

            def decode(item: str, param: str) -> torch.Tensor:  # the dataset's preprocessing
                return index.transform(self.decoder.image(item, param))

            with self.batchers["search"].reserve(1) as slot:
                (pixels,) = await self._decode(decode, [req.image], ["image"])
                (vector,) = await slot.submit([("image", pixels)])
            shown = {"image": True}
        records = await self._run_in_pool(index.search, vector, req.k, req.where)
        for r in records:
            r["metadata"] = {k: _jsonable(v) for k, v in r["metadata"].items()}
        return {
            "object": "list",
            "model": self.backend.name,
            "dataset": str(index.dataset.root),
            "query": shown,
            "data": records,
        }

    async def thumbnail(self, row: int) -> bytes:
        index = self.require_index()
        return await self._run_in_pool(index.thumbnail, row)

    # --- descriptions --------------------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.backend.describe()]}


def _decode_thread() -> None:
    """A decode thread yields to the model thread, as the dataset loaders do (``embedding.files``)."""
    from ..embedding.files import yield_to_model

    yield_to_model(thread_only=True)


def _params(field: str, value: str | list[str]) -> list[str]:
    """How errors name the items: ``input`` for one string, ``input[i]`` in a list."""
    return [field] if isinstance(value, str) else [f"{field}[{i}]" for i in range(len(value))]


def _encode(vector: torch.Tensor, encoding: str) -> list[float] | str:
    """A ``(D,)`` float32 vector as a list of floats, or OpenAI's base64: little-endian float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _jsonable(value: Any) -> Any:
    """A metadata value (from Parquet) as JSON: bytes as base64, dates as ISO text, NaN as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)

"""The request bodies, as pydantic models (unknown fields are refused, so a typo is an error, not a
default silently used). Responses are plain JSON built where they are answered."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

StrictInt = Annotated[int, Field(strict=True)]
Items = str | list[str]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EmbeddingRequest(Request):
    """``POST /v1/embeddings``: OpenAI's request, plus ``modality``. ``input``: a string or a list; text
    by default, ``image`` items are data URIs, bare base64 or (with ``--allow-urls``) http(s) URLs,
    ``video`` items base64 video files. ``dimensions`` is refused (PE embeddings are not trained to be cut)."""

    input: Items
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    modality: Literal["text", "image", "video"] | None = None
    dimensions: StrictInt | None = None
    user: str | None = None


class ClassifyRequest(Request):
    """``POST /v1/classify``: images (as in ``/v1/embeddings``) against ``labels``; ``templates`` with one
    ``{}`` each are averaged per label (default: the label itself, as ``pe classify``)."""

    input: Items
    labels: list[str]
    templates: list[str] | None = None
    model: str | None = None


class FeaturesRequest(Request):
    """``POST /v1/features``: block ``layer``'s features of images: the ``patch`` grid ``(H', W', C)`` or
    its ``pooled`` mean ``(C,)``, as float16 base64."""

    input: Items
    layer: StrictInt = -1
    output: Literal["patch", "pooled"] = "patch"
    model: str | None = None


class SearchRequest(Request):
    """``POST /v1/search``: one ``text`` or one ``image`` query, the ``k`` nearest rows, an optional SQL
    ``where`` filter on the rows' columns."""

    text: str | None = None
    image: str | None = None
    k: StrictInt = 10
    where: str | None = None

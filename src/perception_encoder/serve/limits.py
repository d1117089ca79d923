"""Bounds on what one request may ask for, checked before any work: the body's bytes (an ASGI middleware,
so a body over the limit is never read whole), the number of items, a text's characters, the labels and
prompts of a classification. Each refusal is a 4xx naming the field and the limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import APIError, bad_item, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """Refuse, with 413, a request body over ``max_bytes``: at once when its ``Content-Length`` says so,
    else as soon as the bytes received pass it (the body is read here, bounded, and handed on).

    After the refusal's headers and JSON are sent, the rest of the body is read and thrown away, for at most
    ``DRAIN_BYTES`` and ``DRAIN_SECONDS`` (a lingering close, as nginx does): a client that sends its whole
    body before reading (curl, Python's http.client) then reads the 413 instead of a broken pipe, and the
    server holds none of it."""

    DRAIN_BYTES = 256 << 20
    DRAIN_SECONDS = 10.0

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send, receive, int(length) if length.isdigit() else None)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, receive, None, more=message.get("more_body", False))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, receive: Receive, length: int | None, *, more: bool = True) -> None:
        said = f"{length:,} bytes" if length is not None else "more"
        body = error_body(
            413,
            f"the request body is too large ({said}; the limit is {self.max_bytes:,} bytes)",
            "body_too_large",
        )
        data = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        # The answer's bytes go out now; the response ends (and the server closes) after the drain, because
        # a server stops handing on the body once its response is complete.
        await send({"type": "http.response.body", "body": data, "more_body": True})
        if more:
            try:
                await asyncio.wait_for(_discard(receive, self.DRAIN_BYTES), self.DRAIN_SECONDS)
            except TimeoutError:
                pass
        await send({"type": "http.response.body", "body": b""})


async def _discard(receive: Receive, max_bytes: int) -> None:
    """Read a request's body to its end (or a disconnect, or ``max_bytes``) and keep none of it."""
    seen = 0
    while seen <= max_bytes:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def as_items(value: str | list[str], field: str, max_items: int) -> list[str]:
    """A request's ``input`` (one string or a list) as a list of at least one and at most ``max_items``."""
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise APIError(
            400, f"{field} is empty: give a string or a list of at least one", code="empty_input", param=field
        )
    if len(items) > max_items:
        raise APIError(
            413,
            f"{field} has {len(items):,} items; the limit is {max_items:,} per request (--max-items)",
            code="too_many_items",
            param=field,
        )
    return items


def check_text(text: str, param: str, max_chars: int) -> str:
    """``text`` after checking it is not blank and at most ``max_chars`` characters."""
    if not text.strip():
        raise bad_item(param, "is an empty string", "empty_input")
    if len(text) > max_chars:
        raise APIError(
            413,
            f"{param} has {len(text):,} characters; the limit is {max_chars:,} (the model reads its first "
            "tokens only)",
            code="text_too_long",
            param=param,
        )
    return text


def check_labels(labels: list[str], templates: list[str], max_labels: int, max_prompts: int) -> None:
    """Labels: at least one, distinct, non-blank, at most ``max_labels``; templates: each with one ``{}``
    (``zeroshot.check_template``); labels x templates at most ``max_prompts``."""
    from ..zeroshot import check_template

    if not labels:
        raise APIError(
            400, "labels is empty: give at least one class name", code="empty_input", param="labels"
        )
    if len(labels) > max_labels:
        raise APIError(
            413,
            f"labels has {len(labels):,} names; the limit is {max_labels:,}",
            code="too_many_labels",
            param="labels",
        )
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if not label.strip():
            raise bad_item(f"labels[{i}]", "is an empty string", "empty_input")
        if label in seen:
            raise bad_item(
                f"labels[{i}]", f"{label!r} is given twice; each label must be distinct", "duplicate_label"
            )
        seen.add(label)
    if not templates:
        raise APIError(
            400, "templates is empty: omit it, or give at least one", code="empty_input", param="templates"
        )
    for i, template in enumerate(templates):
        try:
            check_template(template)
        except ValueError as e:
            raise bad_item(f"templates[{i}]", str(e), "invalid_template") from None
    if len(labels) * len(templates) > max_prompts:
        raise APIError(
            413,
            f"{len(labels)} labels x {len(templates)} templates = {len(labels) * len(templates):,} prompts; the "
            f"limit is {max_prompts:,}",
            code="too_many_prompts",
            param="templates",
        )

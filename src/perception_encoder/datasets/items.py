"""One input of a dataset job: where its pixels come from and the facts of its row. Small and picklable, so
it travels to loader processes and Ray workers; the pixels are read only when it is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["file", "member", "bytes", "url", "bad"]


@dataclass(frozen=True)
class InputItem:
    """An input at ``position`` in the job's input order.

    ``kind``: ``"file"`` (``ref`` is a path: an image or a video), ``"member"`` (bytes ``offset`` ..
    ``offset + size`` of the tar file ``ref``, ``name`` the member's name), ``"bytes"`` (``data`` holds an
    encoded image, from a table), ``"url"`` (``ref`` is an http(s) URL), ``"bad"`` (known unusable when the
    inputs were listed: a missing name, a folder that cannot be listed; ``problem`` says why).
    ``metadata``: the row's carried columns, ``(name, value)`` pairs in the dataset's column order.
    """

    position: int
    id: str
    source: str
    kind: Kind
    ref: str = ""
    name: str = ""
    offset: int = 0
    size: int = 0
    data: bytes | None = field(default=None, repr=False)
    metadata: tuple[tuple[str, Any], ...] = ()
    problem: str | None = None

"""The errors of ``pe index`` / ``pe search`` / ``pe dedup``: each names the dataset and what to do."""

from __future__ import annotations

from ..errors import PEError


class VectorIndexError(PEError, ValueError):
    """An index that cannot be used as asked: missing, unreadable, or a filter that is not valid."""


class StaleIndexError(VectorIndexError):
    """The dataset changed (more shards, rewritten) since its index was built: rerun ``pe index``."""

"""Exceptions with messages that name the offending input.

Each subclasses a built-in (``ValueError``, ``KeyError``) so callers that catch those still work.
"""

from __future__ import annotations


class PEError(Exception):
    """Base class of the library's own errors."""


class ImageLoadError(PEError, ValueError):
    """An image file that cannot be read: missing, empty, corrupt, or not an image."""


class VideoLoadError(PEError, ValueError):
    """A video file that cannot be decoded, or has no frames."""


class AudioLoadError(PEError, ValueError):
    """An audio file (or a video's sound track) that cannot be decoded, has no audio, or is too long."""


class CheckpointError(PEError, ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, unknown format, or for another model."""


class OutputError(PEError, OSError):
    """An output that cannot be written: a missing or read-only folder, a parent that is a file, a name too
    long for the file system, a full disk. The message names the path."""

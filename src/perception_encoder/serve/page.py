"""The search page: one HTML file, its script and its style sheet, shipped in ``serve/static/`` and served
from memory (no build step, nothing from another origin). A fixed table of names is served: no path from
a request ever reaches the file system here."""

from __future__ import annotations

from functools import cache
from importlib import resources

#: name -> media type of every file the page is made of.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

#: The page runs only its own script and style and talks only to this server; thumbnails arrive as blobs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@cache
def asset(name: str) -> tuple[bytes, str] | None:
    """``(content, media type)`` of a page file, or ``None`` for any other name."""
    if name not in FILES:
        return None
    return resources.files(__package__).joinpath("static", name).read_bytes(), FILES[name]

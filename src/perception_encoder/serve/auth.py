"""Bearer-token authentication (``--api-key`` / ``PE_API_KEY``): every route except the page, its static
files, ``/health`` and ``/ready`` needs ``Authorization: Bearer <key>``; 401 otherwise. The key is compared
in constant time."""

from __future__ import annotations

import hmac

from .errors import APIError

#: Routes anyone may call: the page (it holds no data; it asks for the key when the API answers 401) and
#: the probes an orchestrator calls without credentials.
PUBLIC_PATHS = frozenset({"/", "/health", "/ready", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def check_bearer(authorization: str | None, key: str) -> None:
    """Nothing when ``authorization`` is ``Bearer <key>``; else a 401 ``APIError``."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "this server needs an API key: send the header 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(
            401, "the API key is wrong", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )

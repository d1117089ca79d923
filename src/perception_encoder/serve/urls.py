"""Which image URLs the server fetches: none unless started with ``--allow-urls``; then public addresses
only unless ``--allow-private-urls`` (a server that fetches any URL for its callers reaches what they
cannot: ``localhost``, the cloud's metadata address, the office network). The address is checked when the
connection is made, redirects included (``datasets.fetch.fetch_url(allow_private=False)``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..datasets.fetch import AddressRefused, FetchError, fetch_url
from .errors import APIError

_URL = re.compile(r"^https?://", re.IGNORECASE)


def is_url(item: str) -> bool:
    return _URL.match(item) is not None


@dataclass(frozen=True)
class UrlPolicy:
    allow: bool = False
    allow_private: bool = False
    timeout: float = 10.0
    max_bytes: int = 32 << 20

    def fetch(self, url: str, param: str) -> bytes:
        """The body of ``url`` (an item of a request, named ``param`` in errors): 403 when the policy
        refuses it, 400 when it cannot be fetched (one retry, ``timeout`` seconds each)."""
        if not self.allow:
            raise APIError(
                403,
                f"{param}: this server does not fetch URLs; send the image itself as base64 (or start the "
                "server with --allow-urls)",
                code="url_not_allowed",
                param=param,
            )
        try:
            return fetch_url(
                url,
                timeout=self.timeout,
                retries=1,
                max_bytes=self.max_bytes,
                allow_private=self.allow_private,
            )
        except AddressRefused as e:
            raise APIError(
                403,
                f"{param}: {e}; this server fetches public addresses only (start it with "
                "--allow-private-urls to allow others)",
                code="private_url",
                param=param,
            ) from None
        except FetchError as e:
            raise APIError(400, f"{param}: {e}", code="fetch_failed", param=param) from None

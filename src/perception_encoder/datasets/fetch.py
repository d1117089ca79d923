"""Fetching an image (or video) named by an http(s) URL in a table, with the standard library only.

``fetch_url`` gives each attempt a time limit, retries what may pass (timeouts, connection errors, HTTP
5xx and 429) with a short exponential backoff, never retries what will not (other 4xx, a body over the size
limit, a scheme other than http/https), and never reads more than the limit plus one byte. Every failure is
a ``FetchError`` whose message names the URL and the reason.

``allow_private=False`` (the server's URL policy) connects only to public addresses: every address a host
resolves to is checked when the connection is made (each redirect too, so a public URL cannot redirect to
a private one, and the address checked is the address connected to: no second lookup to rebind), and no
proxy is used, since a proxy would make the connection on our behalf.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import ssl
import time
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import PEError
from ..input_files import MAX_IMAGE_FILE_BYTES

#: Seconds before the first retry; each further retry waits twice as long.
BACKOFF_SECONDS = 0.5
#: Bytes read per ``read`` call (the time limit of an attempt is checked between reads).
_CHUNK = 1 << 20
_SCHEMES = ("http", "https")
_URL_SAFE = "/%:@!$&'()*+,;=-._~"  # characters a URL path keeps as they are (RFC 3986), and escapes
_USER_AGENT = "perception-encoder (+https://github.com/facebookresearch/perception_models)"


class FetchError(PEError, OSError):
    """A URL that cannot be fetched: a refused scheme, an HTTP error, a timeout, a connection failure, a
    body over the size limit. The message names the URL and the reason."""


class AddressRefused(FetchError):
    """A URL whose host resolves to an address that is not public (``fetch_url(..., allow_private=False)``)."""


class _Retry(Exception):
    """An attempt that failed in a way another attempt may not (the message is the reason)."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only: urllib's own handler also follows ``ftp://`` ones."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in _SCHEMES:
            raise FetchError(f"cannot fetch {req.full_url}: it redirects to {newurl}, which is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def is_public_address(address: str) -> bool:
    """Whether ``address`` (an IPv4 or IPv6 literal) is a public unicast address: not private, loopback,
    link-local, multicast, reserved or unspecified (an IPv4-mapped IPv6 address is judged as its IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope id (fe80::1%eth0) is no part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _public_connection(
    address: tuple[str, int], timeout: object = socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None
):
    """``socket.create_connection`` to public addresses only: the host is resolved once, every address it
    resolves to is checked (one private address refuses the host), and the checked addresses are the ones
    connected to."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve {host}: {e.strerror or e}") from None
    for *_, sockaddr in infos:
        if not is_public_address(sockaddr[0]):
            raise AddressRefused(f"{host} resolves to {sockaddr[0]}, which is not a public address")
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            error = e
            sock.close()
    raise error or OSError(f"cannot connect to {host}")


def _public_only(connection_class: type[http.client.HTTPConnection]):
    """A connection factory for ``AbstractHTTPHandler.do_open`` whose connections go through
    ``_public_connection``."""

    @functools.wraps(connection_class)
    def make(*args, **kwargs):
        conn = connection_class(*args, **kwargs)
        conn._create_connection = _public_connection
        return conn

    return make


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_public_only(http.client.HTTPConnection), req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_public_only(http.client.HTTPSConnection), req, context=self._context)


def _opener(allow_private: bool) -> urllib.request.OpenerDirector:
    if allow_private:
        return urllib.request.build_opener(_Redirects)
    # no proxy: a proxy would connect for us, to any address
    return urllib.request.build_opener(
        _Redirects, urllib.request.ProxyHandler({}), _PublicHTTPHandler, _PublicHTTPSHandler
    )


def _request_url(url: str) -> str:
    """``url`` checked (http/https with a host) and made sendable: spaces and non-ASCII characters of the
    path and query percent-encoded as UTF-8 (existing ``%XX`` escapes kept), a non-ASCII host encoded with
    IDNA, the fragment dropped (it is never sent). Tables hold URLs as people typed them."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as e:  # an invalid port or IPv6 literal
        raise FetchError(f"cannot fetch {url}: invalid URL ({e})") from None
    if parts.scheme.lower() not in _SCHEMES:
        shown = f"{parts.scheme!r}" if parts.scheme else "none"
        raise FetchError(f"cannot fetch {url}: only http and https URLs are fetched (scheme: {shown})")
    if not hostname:
        raise FetchError(f"cannot fetch {url}: the URL has no host")
    try:
        netloc = parts.netloc if parts.netloc.isascii() else parts.netloc.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise FetchError(f"cannot fetch {url}: invalid host name ({e})") from None
    path = quote(parts.path, safe=_URL_SAFE) or "/"
    query = quote(parts.query, safe=_URL_SAFE + "?")
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def _check_limits(timeout: float, retries: int, max_bytes: int) -> None:
    if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")


def _read_body(response, url: str, timeout: float, max_bytes: int) -> bytes:
    """The body of ``response``, at most ``max_bytes`` (``FetchError`` beyond), read within ``timeout``
    seconds overall (``_Retry`` past it), in chunks so that a slow sender cannot stretch the limit much."""
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise FetchError(
            f"cannot fetch {url}: it is too large ({int(length):,} bytes; the limit is {max_bytes:,})"
        )
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    received = 0
    while received <= max_bytes:
        chunk = response.read(min(_CHUNK, max_bytes + 1 - received))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        received += len(chunk)
        if time.monotonic() > deadline:
            raise _Retry(f"timed out after {timeout:g} s reading the body")
    raise FetchError(f"cannot fetch {url}: it is too large (over {max_bytes:,} bytes)")


def _attempt(opener: urllib.request.OpenerDirector, url: str, timeout: float, max_bytes: int) -> bytes:
    """One request. Returns the body; raises ``_Retry`` for a failure worth another attempt and
    ``FetchError`` for one that is final."""
    try:
        request = urllib.request.Request(_request_url(url), headers={"User-Agent": _USER_AGENT})
        with opener.open(request, timeout=timeout) as response:
            return _read_body(response, url, timeout, max_bytes)
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code} {e.reason}".rstrip()
        e.close()
        if e.code >= 500 or e.code == 429:
            raise _Retry(reason) from None
        raise FetchError(f"cannot fetch {url}: {reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, AddressRefused):  # the same host resolves the same way next time
            raise AddressRefused(f"cannot fetch {url}: {e.reason}") from None
        if isinstance(e.reason, ssl.SSLCertVerificationError):  # another try gets the same certificate
            raise FetchError(f"cannot fetch {url}: {e.reason}") from None
        if isinstance(e.reason, TimeoutError):
            raise _Retry(f"timed out after {timeout:g} s") from None
        raise _Retry(f"cannot connect: {getattr(e.reason, 'strerror', None) or e.reason}") from None
    except TimeoutError:
        raise _Retry(f"timed out after {timeout:g} s") from None
    except (http.client.InvalidURL, ValueError) as e:  # another try sends the same URL
        raise FetchError(f"cannot fetch {url}: invalid URL ({e})") from None
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        if isinstance(e, FetchError):
            raise
        raise _Retry(f"connection failed: {type(e).__name__}: {e}") from None


def fetch_url(
    url: str,
    *,
    timeout: float = 30,
    retries: int = 3,
    max_bytes: int = MAX_IMAGE_FILE_BYTES,
    allow_private: bool = True,
) -> bytes:
    """The body of the http(s) ``url``.

    Args:
        url: an ``http://`` or ``https://`` URL; other schemes are refused without a request.
        timeout: seconds each attempt may take (to connect, and again to read the body).
        retries: further attempts after a timeout, a connection error, or an HTTP 5xx / 429 answer, waiting
            ``BACKOFF_SECONDS`` (0.5 s) before the first and twice as long before each next one. Other HTTP
            errors (404, 403, ...) are final at once.
        max_bytes: the largest body accepted: a larger ``Content-Length`` is refused before reading, and
            the body is read at most ``max_bytes + 1`` bytes.
        allow_private: ``False``: connect only to public addresses, without a proxy (the module
            docstring); a host that resolves to another address is an ``AddressRefused``, never retried.

    Raises:
        FetchError: naming the URL and the reason (with the number of attempts when there were several).
    """
    _check_limits(timeout, retries, max_bytes)
    _request_url(url)  # a URL that cannot be fetched fails before any request
    opener = _opener(allow_private)
    reason = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        try:
            return _attempt(opener, url, timeout, max_bytes)
        except _Retry as e:
            reason = str(e)
    tries = f" (after {retries + 1} attempts)" if retries else ""
    raise FetchError(f"cannot fetch {url}: {reason}{tries}")

"""Running an app with uvicorn: bound to the address asked for (127.0.0.1 by default), the listening socket
made here so the port is known before serving (``--port 0`` picks a free one), and SIGTERM / Ctrl-C
draining: uvicorn stops accepting connections, lets the requests in flight finish (``drain_timeout``
seconds at most), then the app's lifespan stops the batchers and the model thread, and the process exits 0."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` (IPv6 when ``host`` is an IPv6 address), listening."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def build_server(
    app: Any,
    *,
    drain_timeout: float = 30.0,
    max_connections: int | None = None,
    log_level: str = "info",
    access_log: bool = False,
    on_started: Callable[[], None] | None = None,
) -> Any:
    """A ``uvicorn.Server`` for ``app`` (run it with ``.run(sockets=[sock])``; ``should_exit = True`` stops it
    as SIGTERM does). ``on_started`` is called once it accepts connections."""
    import uvicorn

    config = uvicorn.Config(
        app,
        timeout_graceful_shutdown=drain_timeout,
        limit_concurrency=max_connections,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.capture_signals = lambda: _drain_on_signals(server)  # type: ignore[method-assign]
    if on_started is not None:
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets=sockets)
            if server.started:
                on_started()

        server.startup = startup  # type: ignore[method-assign]
    return server


@contextlib.contextmanager
def _drain_on_signals(server: Any) -> Iterator[None]:
    """SIGTERM and SIGINT start uvicorn's drain (``handle_exit``); after it the process exits normally (0),
    where uvicorn would raise the signal again and die by it. Outside the main thread nothing is installed
    (tests run servers in threads and stop them with ``should_exit``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_server(app: Any, sock: socket.socket, **options: Any) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT, then drain and return (``build_server``'s options)."""
    build_server(app, **options).run(sockets=[sock])

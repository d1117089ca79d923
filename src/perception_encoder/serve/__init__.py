"""``pe serve``: an HTTP service for embeddings, zero-shot classification, features and search, with
dynamic batching, limits, authentication, metrics and a search page (``pip install -e ".[serve]"``:
FastAPI, uvicorn, prometheus_client, imported only in this package).

    from perception_encoder.serve import Backend, ServeConfig, Service, create_app
    app = create_app(Service(Backend.from_torch(model, "PE-Core-B16-224"), ServeConfig()))

- ``app``: the FastAPI app factory (routes, JSON errors, middleware); ``server``: uvicorn, draining on SIGTERM;
- ``service``: what each route does; ``backend``: the model thread's work (the library's pipeline);
- ``batcher``: dynamic batching per modality, bounded (429 beyond); ``inputs``: items -> pixels;
- ``limits``: body, items, text, labels; ``urls``: which URLs are fetched; ``auth``: bearer keys;
- ``metrics``: Prometheus; ``search`` and ``thumbnails``: ``--index DATASET``; ``page``: the search page.
"""

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # one line for the CLI, naming the extra
    raise ImportError(
        f"pe serve needs FastAPI, uvicorn and prometheus_client ({exc.name} is missing): "
        "pip install -e '.[serve]'"
    ) from exc

from .app import create_app
from .backend import Backend
from .config import ServeConfig
from .search import SearchIndex
from .server import build_server, listening_socket, run_server
from .service import Service

__all__ = [
    "Backend",
    "SearchIndex",
    "ServeConfig",
    "Service",
    "build_server",
    "create_app",
    "listening_socket",
    "run_server",
]

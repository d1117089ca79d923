"""The FastAPI app: ``create_app(service)``. Routes, the JSON error answers, and the layers every request
goes through, outermost first: metrics and security headers, authentication, the body-size limit.

Routes: ``POST /v1/embeddings``, ``/v1/classify``, ``/v1/features``, ``/v1/search``; ``GET /v1/models``,
``/v1/index``, ``/v1/thumbnails/{row}``, ``/health`` (the process answers), ``/ready`` (weights loaded and
warm: 200, else 503), ``/metrics`` (Prometheus), ``/`` (the search page) and ``/static/{name}``.

Every error is JSON in OpenAI's shape (``errors.APIError``) with a 4xx status: a bad field, item, filter or
route, a body or list over a limit, no key or a wrong one, a full queue (429 with ``Retry-After``). A 500
means a bug, never a bad request.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .auth import check_bearer, is_public
from .batcher import Overloaded
from .errors import APIError, error_body
from .limits import BodyLimit
from .page import CONTENT_SECURITY_POLICY, asset
from .schemas import ClassifyRequest, EmbeddingRequest, FeaturesRequest, SearchRequest
from .service import Service

log = logging.getLogger("perception_encoder.serve")

ROUTES = (
    "POST /v1/embeddings, POST /v1/classify, POST /v1/features, POST /v1/search, GET /v1/models, "
    "GET /v1/index, GET /v1/thumbnails/{row}, GET /health, GET /ready, GET /metrics, GET /"
)


def create_app(service: Service) -> FastAPI:
    """An app answering with ``service``; its lifespan starts the batchers and the warm-up, and stops them
    after the server has drained its requests."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="perception-encoder",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # the interactive docs load their script from a CDN; /openapi.json stays
        redoc_url=None,
    )
    app.state.service = service
    _add_handlers(app)
    _add_routes(app, service)
    # added last = outermost: observe every answer, then authenticate, then read the (bounded) body
    app.add_middleware(BodyLimit, max_bytes=service.config.max_body_bytes)
    app.add_middleware(Authenticate, key=service.config.api_key)
    app.add_middleware(Observe, service=service)
    return app


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status, headers=headers)


# --- routes ---------------------------------------------------------------------------------------------


def _add_routes(app: FastAPI, service: Service) -> None:
    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Response:
        return json_response(await service.embed(body))

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> Response:
        return json_response(await service.classify(body))

    @app.post("/v1/features")
    async def features(body: FeaturesRequest) -> Response:
        return json_response(await service.features(body))

    @app.post("/v1/search")
    async def search(body: SearchRequest) -> Response:
        return json_response(await service.search(body))

    @app.get("/v1/models")
    async def models() -> Response:
        return json_response(service.models())

    @app.get("/v1/index")
    async def index_info() -> Response:
        return json_response(service.require_index().describe())

    @app.get("/v1/thumbnails/{row}")
    async def thumbnail(row: int) -> Response:
        data = await service.thumbnail(row)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/health")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        ok = service.state == "ready"
        return json_response({"status": service.state, "model": service.backend.name}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.get("/")
    async def page() -> Response:
        return _asset("index.html")

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        return _asset(name)


def _asset(name: str) -> Response:
    found = asset(name)
    if found is None:
        raise APIError(404, f"no page file {name!r}", code="not_found")
    content, media_type = found
    return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})


# --- errors -----------------------------------------------------------------------------------------------


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        return json_response(exc.body(), exc.status, exc.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> Response:
        body = error_body(429, f"{exc}: the server is busy", "overloaded")
        return json_response(body, 429, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        message, param = describe_validation(exc.errors())
        return json_response(error_body(400, message, "invalid_request", param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; the routes are {ROUTES}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return json_response(error_body(exc.status_code, message, "http_error"), exc.status_code, exc.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        body = error_body(500, f"internal error ({type(exc).__name__}: {exc})", "internal_error")
        return json_response(body, 500)


def describe_validation(errors: Any) -> tuple[str, str | None]:
    """The first pydantic error as ``"field: what is wrong (got ...)"`` and the field's name
    (``input[3]``, ``labels``); a body that is not JSON says so."""
    if not errors:
        return "the request is not valid", None
    e = errors[0]
    loc = [part for part in e.get("loc", ()) if part != "body"]
    # a union (a string or a list) reports each branch: name the field, not the branch
    loc = [part for part in loc if not (isinstance(part, str) and ("[" in part or part in ("str", "list")))]
    param = None
    for part in loc:
        param = f"{param}[{part}]" if isinstance(part, int) and param else str(part)
    if e.get("type") == "json_invalid":
        return f"the body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})", None
    if e.get("type") == "missing" and not loc:
        return "the body is missing: send a JSON object", None
    if not loc and isinstance(e.get("input"), (bytes, str)):  # FastAPI reads JSON only when it is said to be
        return "the body must be a JSON object, sent with the header 'Content-Type: application/json'", None
    got = e.get("input")
    shown = repr(got)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    where = f"{param}: " if param else ""
    extra = "" if e.get("type") == "missing" else f" (got {shown})"
    return f"{where}{e.get('msg', 'invalid')}{extra}", param


# --- middleware -------------------------------------------------------------------------------------------


class Authenticate:
    """401 for a request without the right bearer token, when the server has a key (``auth``)."""

    def __init__(self, app: Any, key: str | None) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.key is None or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            check_bearer(headers.get(b"authorization", b"").decode("latin-1") or None, self.key)
        except APIError as e:
            await json_response(e.body(), e.status, e.headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Observe:
    """Counts and times every answer (``metrics``) and adds the security headers: ``nosniff`` everywhere,
    the page's content security policy on the page."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.metrics = service.metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        page = scope["path"] == "/"

        async def send_observed(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if page:
                    headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.metrics.observe_request(_route(scope), status, time.perf_counter() - start)


def _route(scope: Any) -> str:
    """The route template that answered (``/v1/thumbnails/{row}``), or ``other``: a bounded label set."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"

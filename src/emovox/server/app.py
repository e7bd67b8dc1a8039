"""The HTTP service: the FastAPI wav2vec2 hybrid's and the Keras backend CNN's endpoints, timelines, text, a WebSocket stream, a web page.

>>> from emovox.server import Settings, create_app
>>> app = create_app(Settings(model="runs/r1"))        # or create_app() to read the environment

``uvicorn emovox.server.app:create_app --factory`` serves it with settings from the
environment; ``emovox serve`` does the same from flags. Models load once, when the service
starts (the lifespan; or just after, with ``load_in_background``), never at import. Uploads are
parsed in memory within ``EMOVOX_MAX_UPLOAD_MB``; no client input is ever used as a file path.
Clips are decoded in worker threads and classified in batches across requests
(:mod:`.batching`, :mod:`.clips`); the routes are in :mod:`.routes`, the WebSocket in :mod:`.stream`, the API key in :mod:`.auth` on inference threads, so the event loop never waits for a
model; a bounded queue answers 503 with ``Retry-After`` past its limit. ``/healthz``,
``/readyz`` and ``/metrics`` (:mod:`.observability`) are for operators.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from emovox import __version__
from emovox.server.batching import DynamicBatcher
from emovox.server.clips import classify_clips
from emovox.server.context import mock_flag
from emovox.server.observability import Metrics, ObservabilityMiddleware
from emovox.server.routes import add_operations_routes, add_routes
from emovox.server.services import Services, load_services
from emovox.server.settings import Settings
from emovox.server.uploads import ApiError, BodyLimitMiddleware, error_body

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, services: Services | None = None,
               batcher: Callable[..., DynamicBatcher] = DynamicBatcher) -> FastAPI:
    """The FastAPI app. ``settings`` default to the environment; ``services`` (already loaded models)
    skip loading at start-up (``emovox serve`` loads them first, to fail before binding a port);
    ``batcher``: the class that batches clips across requests (a Ray Serve replica passes one that
    batches with ``@serve.batch``: :mod:`emovox.scale.ray_serve`)."""
    settings = Settings.from_env() if settings is None else settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.torch_threads is not None and importlib.util.find_spec("torch") is not None:
            import torch  # the PyTorch backend's threads (ONNX Runtime's are set when the model loads)

            torch.set_num_threads(int(settings.torch_threads))
        app.state.limiter = anyio.CapacityLimiter(settings.max_concurrency)
        app.state.batcher = _batcher(app, settings, batcher)
        await app.state.batcher.start()
        loading = None
        try:
            if services is None and settings.load_in_background:
                loading = asyncio.create_task(_load_in_background(app, settings))
            else:
                await _load(app, settings, services)
            yield
        finally:
            if loading is not None and not loading.done():
                loading.cancel()
            await app.state.batcher.close()
            Metrics.process_exited()

    app = FastAPI(
        title="emovox",
        version=__version__,
        description=("Speech (and text) emotion recognition. Upload a clip as multipart field `file`; "
                     "every prediction gives the top emotion, its calibrated confidence and every label's "
                     "probability. `WS /stream` takes 16 kHz 16-bit PCM chunks. Errors are "
                     '`{"status": "error", "error": ..., "detail": ...}`. A web page is at [/ui](/ui).'),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    mock = mock_flag(app)
    _install_error_handlers(app, mock)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, mock=mock)
    if settings.use_mock_models:  # true or auto
        @app.middleware("http")
        async def _mock_header(request: Request, call_next):
            response = await call_next(request)
            if mock():
                response.headers["X-Emovox-Mock"] = "true"
            return response
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type"], max_age=600)
    add_routes(app)
    add_operations_routes(app)
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics, router=app.router)
    # the seeds' clients call "/predict-emotion" as often as "/predict-emotion/": serve both, not a 307
    app.add_middleware(SlashAliases, paths={r.path for r in app.routes if r.path != "/"})
    return app


def _batcher(app: FastAPI, settings: Settings, cls: Callable[..., DynamicBatcher]) -> DynamicBatcher:
    """Clips from concurrent requests, classified together on ``max_concurrency`` inference threads."""
    metrics: Metrics = app.state.metrics
    return cls(lambda jobs: classify_clips(app.state.services.audio, jobs),
                          max_batch=settings.max_batch, max_wait_s=settings.batch_wait_ms / 1000,
                          max_queue=settings.max_queue, workers=settings.max_concurrency,
                          timeout_s=settings.request_timeout_s, on_batch=metrics.observe_batch,
                          on_depth=metrics.change_depth)


async def _load(app: FastAPI, settings: Settings, services: Services | None) -> None:
    """Load the models (unless given) and publish them: from here on the service is ready."""
    if services is None:
        try:
            services = await anyio.to_thread.run_sync(load_services, settings)
        except Exception as e:
            log.error("emovox server cannot start: %s", e)
            raise
    for name, seconds in services.load_s.items():
        app.state.metrics.model_load.labels(name).set(seconds)
    app.state.services = s = services
    log.info("emovox server ready: speech model %s (%s)%s, text %s%s", s.audio_info["name"],
             s.audio_info["version"], " [MOCK]" if s.mock else "",
             s.text_info.get("name") if s.text_info["available"] else "unavailable", " [MOCK]" if s.text_mock else "")


async def _load_in_background(app: FastAPI, settings: Settings) -> None:
    """``load_in_background``: a failed load is logged and kept; /healthz and /readyz then answer 503 with it."""
    try:
        await _load(app, settings, None)
    except Exception as e:
        app.state.load_error = f"{type(e).__name__}: {e}"


class SlashAliases:
    """ASGI middleware: a request for ``/path`` is routed to ``/path/`` when only the latter exists, and ``/path/``
    to ``/path`` likewise (Starlette would answer 307 with an empty body, which a POST client does not follow
    with its file)."""

    def __init__(self, app, paths: set[str]):
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and path not in self.paths:
            other = path[:-1] if path.endswith("/") and path != "/" else path + "/"
            if other in self.paths:
                scope = {**scope, "path": other, "raw_path": other.encode()}
        await self.app(scope, receive, send)


def _install_error_handlers(app: FastAPI, mock: Callable[[], bool]) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc, ApiError):
            body = error_body(exc.message, exc.extra, mock=mock())
        else:
            body = error_body(str(exc.detail), None, mock=mock())
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), exclude={"input", "url"})
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'validation failed')}"
        return JSONResponse(error_body(message, errors, mock=mock()), 422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal server error", type(exc).__name__, mock=mock()), 500)

"""The HTTP service: seed 002's and seed 001's endpoints, timelines, text, a WebSocket stream, a web page.

>>> from emovox.server import Settings, create_app
>>> app = create_app(Settings(model="runs/r1"))        # or create_app() to read the environment

``uvicorn emovox.server.app:create_app --factory`` serves it with settings from the
environment; ``emovox serve`` does the same from flags. Models load once, when the service
starts (the lifespan; or just after, with ``load_in_background``), never at import. Uploads are
parsed in memory within ``EMOVOX_MAX_UPLOAD_MB``; no client input is ever used as a file path.
Clips are decoded in worker threads and classified in batches across requests
(:mod:`.batching`, :mod:`.clips`) on inference threads, so the event loop never waits for a
model; a bounded queue answers 503 with ``Retry-After`` past its limit. ``/healthz``,
``/readyz`` and ``/metrics`` (:mod:`.observability`) are for operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, TypeVar

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..audio import AudioError, pcm16_to_float
from ..labels import TAXONOMIES, LabelError, music_mood
from . import schemas
from .batching import DynamicBatcher, Overloaded
from .clips import AUDIO_FORMATS, audio_error, check_header, classify_clips, decode_clip
from .observability import ARRIVED, Metrics, ObservabilityMiddleware
from .services import Services, load_services
from .settings import MAX_WS_TEXT_BYTES, MIN_WS_FRAME_S, Settings
from .uploads import ApiError, BodyLimitMiddleware, error_body, read_upload

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Routes that stay open when an API key is set: health, probes, metrics, the web page and the API docs.
OPEN_ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/ui", "/ui/app.js", "/ui/style.css", "/docs",
               "/docs/oauth2-redirect", "/redoc", "/openapi.json")
#: Static files of the web page (name -> media type); nothing else is ever read from disk.
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
UI_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self' ws: wss:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
          "frame-ancestors 'none'")
#: Most windows one timeline request may compute (duration / hop_s), so one request cannot pin a CPU for minutes.
MAX_TIMELINE_WINDOWS = 1200
#: WebSocket close codes.
WS_NORMAL, WS_POLICY, WS_TOO_BIG = 1000, 1008, 1009

LABELS_QUERY = Query(None, description=f"fold scores into another label set: {', '.join(TAXONOMIES)}",
                     examples=["basic5"])

ERRORS = {
    400: {"model": schemas.ErrorResponse, "description": "empty, truncated or corrupt audio (NaN, zero samples), bad labels="},
    401: {"model": schemas.ErrorResponse, "description": "API key missing or wrong (when EMOVOX_API_KEY is set)"},
    413: {"model": schemas.ErrorResponse, "description": "upload larger than EMOVOX_MAX_UPLOAD_MB, more multipart parts "
                                                          "than EMOVOX_MAX_PARTS, or audio longer than EMOVOX_MAX_DURATION_S"},
    415: {"model": schemas.ErrorResponse, "description": f"not an audio file (accepted: {AUDIO_FORMATS})"},
    422: {"model": schemas.ErrorResponse, "description": "missing multipart field or invalid parameters"},
    503: {"model": schemas.ErrorResponse, "description": "overloaded (the queue is full, or the request waited longer "
                                                          "than EMOVOX_REQUEST_TIMEOUT_S) or still loading; see Retry-After"},
}


def _multipart_doc(*names: str) -> dict[str, Any]:
    props = {n: {"type": "string", "format": "binary",
                 "description": f"audio file ({AUDIO_FORMATS}); any rate, mono or stereo"} for n in names}
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if len(names) == 1:
        schema["required"] = list(names)
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


# ---------------------------------------------------------------------------------------------
# Helpers


def _services(request: Request | WebSocket) -> Services:
    """The loaded models; 503 with ``Retry-After`` while they load in the background."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        request.app.state.metrics.shed.labels("loading").inc()
        raise _not_ready(request.app)
    return services


def _not_ready(app: FastAPI) -> ApiError:
    failed = getattr(app.state, "load_error", None)
    if failed:
        return ApiError(503, f"the models failed to load: {failed}", {"reason": "load_failed"})
    return ApiError(503, "the service is starting: the models are still loading; retry shortly",
                    {"reason": "loading", "retry_after_s": 1}, headers={"Retry-After": "1"})


def _settings(request: Request | WebSocket) -> Settings:
    return request.app.state.settings


def _out(request: Request | WebSocket, payload: dict[str, Any], *, mock: bool | None = None) -> dict[str, Any]:
    """Mark an answer ``"mock": true`` when the model that gave it is a mock (default: the speech model)."""
    if _services(request).mock if mock is None else mock:
        payload["mock"] = True
    return payload


def _mock_flag(app: FastAPI) -> Callable[[], bool]:
    """Whether the running service serves any mock model (known once the models are loaded)."""
    def flag() -> bool:
        services = getattr(app.state, "services", None)
        return bool(services is not None and services.any_mock)
    return flag


async def _in_thread(request: Request | WebSocket, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (decoding, inference) in a worker thread, at most ``max_concurrency`` at once."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=request.app.state.limiter)


def _check_labels(services: Services, labels: str | None) -> str | None:
    """``labels=`` must name a taxonomy (never a path or a mapping) the model's labels fold into."""
    if labels is None or labels == "":
        return None
    if labels not in TAXONOMIES:
        raise ApiError(400, f"unknown labels={labels!r}; accepted: {', '.join(TAXONOMIES)}",
                       {"accepted": list(TAXONOMIES)})
    try:
        services.audio.output_labels(labels)
    except LabelError as e:
        raise ApiError(400, f"labels={labels!r}: {e}") from e
    return labels


def _time_left(request: Request) -> float:
    """Seconds left of the request's timeout, counted from its arrival (reading its upload included)."""
    arrived = getattr(request.state, ARRIVED, None)
    waited = 0.0 if arrived is None else time.monotonic() - arrived
    return _settings(request).request_timeout_s - waited


@contextlib.contextmanager
def _model_slot(request: Request) -> Iterator[DynamicBatcher]:
    """A place in the queue for one request's model work (decoding, batching, inference): 503 with
    ``Retry-After`` when none is free, when the request waits too long, or while shutting down."""
    batcher: DynamicBatcher = request.app.state.batcher
    try:
        if _time_left(request) <= 0:  # it waited its whole time before reaching the queue: shed it now
            raise batcher.timed_out()
        with batcher.admit():
            yield batcher
    except Overloaded as e:  # TimedOut too
        request.app.state.metrics.shed.labels(e.reason).inc()
        raise ApiError(503, str(e), {"reason": e.reason, "retry_after_s": e.retry_after_s},
                       headers={"Retry-After": str(e.retry_after_s)}) from e


def _timeline(services: Services, settings: Settings, data: bytes, labels: str | None, window_s: float, hop_s: float):
    duration = check_header(data, max_duration_s=settings.max_duration_s)
    n_windows = 1 + max(0.0, duration - window_s) / hop_s
    if n_windows > MAX_TIMELINE_WINDOWS:
        raise ApiError(400, f"too many timeline windows: {duration:.0f} s with hop_s={hop_s:g} gives {n_windows:.0f}, "
                            f"more than {MAX_TIMELINE_WINDOWS}; use hop_s >= {duration / MAX_TIMELINE_WINDOWS:.2f}",
                       {"max_windows": MAX_TIMELINE_WINDOWS})
    try:
        return services.audio.timeline(data, labels=labels, window_s=window_s, hop_s=hop_s)
    except AudioError as e:
        raise audio_error(e) from e


def _segments(services: Services, settings: Settings, data: bytes, labels: str | None, options: dict):
    check_header(data, max_duration_s=settings.max_duration_s)
    try:
        return services.audio.segments(data, labels=labels, max_duration_s=settings.max_duration_s, **options)
    except AudioError as e:
        raise audio_error(e) from e


def _round(x: float) -> float:
    return round(float(x), 6)


# ---------------------------------------------------------------------------------------------
# Authentication

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's EMOVOX_API_KEY")
_bearer = HTTPBearer(auto_error=False, description="the service's EMOVOX_API_KEY as a bearer token")


def _key_ok(expected: str | None, *candidates: str | None) -> bool:
    """Whether any candidate is the key, in constant time: the SHA-256 digests are compared with
    :func:`hmac.compare_digest` (equal lengths, so not even the key's length shows), every candidate checked."""
    if not expected:
        return True
    want = hashlib.sha256(expected.encode()).digest()
    ok = False
    for c in candidates:
        if c is not None:
            ok |= hmac.compare_digest(hashlib.sha256(c.encode("utf-8", "surrogateescape")).digest(), want)
    return ok


async def require_key(request: Request, key: str | None = Depends(_api_key_header),
                      bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    expected = _settings(request).api_key
    if not _key_ok(expected, key, bearer.credentials if bearer else None):
        raise ApiError(401, "missing or invalid API key: send it in the X-API-Key header or as "
                            "'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})


# ---------------------------------------------------------------------------------------------
# The app


def _static(name: str) -> bytes:
    return (resources.files("emovox.server") / "static" / name).read_bytes()


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
    mock = _mock_flag(app)
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
    _add_routes(app)
    _add_operations_routes(app)
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics, router=app.router)
    # the seeds' clients call "/predict-emotion" as often as "/predict-emotion/": serve both, not a 307
    app.add_middleware(SlashAliases, paths={r.path for r in app.routes if r.path.endswith("/") and r.path != "/"})
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
    """ASGI middleware: a request for ``/path`` is routed to ``/path/`` when only the latter exists
    (Starlette would answer 307 with an empty body, which a POST client does not follow with its file)."""

    def __init__(self, app, paths: set[str]):
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope.get("path", "") + "/" in self.paths:
            scope = {**scope, "path": scope["path"] + "/", "raw_path": scope["path"].encode() + b"/"}
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


def _add_routes(app: FastAPI) -> None:
    """Every route, in the order the OpenAPI document lists them."""
    _add_page_routes(app)
    _add_speech_routes(app)
    _add_text_routes(app)


def _add_page_routes(app: FastAPI) -> None:
    """Health (open) and the web page."""

    @app.get("/", response_model=schemas.Health, tags=["service"], summary="Health, models and links (open)")
    async def health(request: Request):
        s, st = _services(request), _settings(request)
        return {
            "status": "ok", "service": "emovox", "version": __version__, "mock": s.any_mock,
            "models": {"audio": {**s.audio_info, **({"mock": True} if s.mock else {})}, "text": s.text_info},
            "labels": s.audio.labels, "text_available": bool(s.text_info.get("available")),
            "limits": {"max_upload_mb": st.max_upload_mb, "max_duration_s": st.max_duration_s,
                       "confidence_threshold": st.threshold},
            "auth": {"required": bool(st.api_key), "header": "X-API-Key, or Authorization: Bearer <key>",
                     "websocket": "X-API-Key header, or ?api_key= (browsers cannot set WebSocket headers)",
                     "open_routes": list(OPEN_ROUTES)},
            "links": {"ui": "/ui", "docs": "/docs", "openapi": "/openapi.json"},
        }

    @app.get("/ui", include_in_schema=False)
    async def ui() -> HTMLResponse:
        return HTMLResponse(_static("index.html"), headers={"Content-Security-Policy": UI_CSP,
                                                            "Cache-Control": "no-cache"})

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_asset(name: str) -> Response:
        if name not in STATIC_FILES or name == "index.html":
            raise ApiError(404, f"no such page asset: {name!r}")
        return Response(_static(name), media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


def _add_speech_routes(app: FastAPI) -> None:
    auth = [Depends(require_key)]

    async def classify_upload(request: Request, labels: str | None, fields: tuple[str, ...]):
        """Check the labels, read the upload from one of ``fields``, decode it in a worker thread and
        classify it in the next batch. -> (prediction, duration in seconds)"""
        s, st = _services(request), _settings(request)
        labels = _check_labels(s, labels)
        upload = await read_upload(request, fields, max_parts=st.max_parts)
        with _model_slot(request) as batcher:
            job, duration = await _in_thread(request, decode_clip, s.audio, upload.data, labels=labels,
                                             max_duration_s=st.max_duration_s)
            return await batcher.run(job, timeout_s=_time_left(request)), duration

    # -- predictions -------------------------------------------------------------------------
    @app.post("/predict-emotion/", response_model=schemas.EmotionResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=auth, openapi_extra=_multipart_doc("file"), tags=["speech"],
              summary="Classify one clip (seed 002)")
    async def predict_emotion(request: Request, labels: str | None = LABELS_QUERY):
        pred, duration = await classify_upload(request, labels, ("file",))
        s, st = _services(request), _settings(request)
        return _out(request, {
            "emotion": pred.label, "confidence": _round(pred.score), "music_mood": pred.music_mood,
            "all_probabilities": {k: _round(v) for k, v in pred.scores.items()}, "status": "success",
            "low_confidence": pred.low_confidence, "warning": pred.warning, "threshold": st.threshold,
            "duration_s": round(duration, 3), "silent": True if pred.silent else None, "model": s.audio.name,
            "unsupported_labels": list(pred.unsupported_labels) or None,
        })

    @app.post("/predict-realtime/", response_model=schemas.RealtimeResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=auth, openapi_extra=_multipart_doc("audio_buffer"), tags=["speech"],
              summary="Classify a short buffer (seed 002)")
    async def predict_realtime(request: Request, labels: str | None = LABELS_QUERY):
        pred, _ = await classify_upload(request, labels, ("audio_buffer",))
        return _out(request, {"emotion": pred.label, "confidence": _round(pred.score), "music_mood": pred.music_mood,
                              "low_confidence": pred.low_confidence, "warning": pred.warning})

    @app.post("/api/classify-emotion", response_model=schemas.ClassifyResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=auth, openapi_extra=_multipart_doc("file", "audio"), tags=["speech"],
              summary="Classify one clip (seed 001; field 'file' or 'audio')")
    async def classify_emotion(request: Request, labels: str | None = LABELS_QUERY):
        pred, _ = await classify_upload(request, labels, ("file", "audio"))
        return _out(request, {"emotion": pred.label, "confidence": _round(pred.score)})

    @app.post("/predict-timeline/", response_model=schemas.TimelineResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=auth, openapi_extra=_multipart_doc("file"), tags=["speech"],
              summary="Emotion over time in a long recording")
    async def predict_timeline(request: Request, labels: str | None = LABELS_QUERY,
                               window_s: float = Query(3.0, ge=0.5, le=30.0, description="window length, seconds"),
                               hop_s: float = Query(1.0, ge=0.25, le=30.0, description="hop between windows, seconds")):
        s, st = _services(request), _settings(request)
        labels = _check_labels(s, labels)
        upload = await read_upload(request, ("file",), max_parts=st.max_parts)
        with _model_slot(request):  # its windows are batched within the request
            tl = await _in_thread(request, _timeline, s, st, upload.data, labels, window_s, hop_s)
        return _out(request, {**tl.to_dict(), "status": "success", "model": s.audio.name})

    @app.post("/predict-segments/", response_model=schemas.SegmentsResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=auth, openapi_extra=_multipart_doc("file"), tags=["speech"],
              summary="The speech in a recording, each segment's emotion (voice activity detection)")
    async def predict_segments(request: Request, labels: str | None = LABELS_QUERY,
                               min_silence_ms: float = Query(300.0, ge=0, le=10000, description="a pause this long "
                                                             "ends a segment"),
                               speech_pad_ms: float = Query(30.0, ge=0, le=2000, description="padding on each side"),
                               max_segment_s: float = Query(30.0, ge=5.0, le=600.0, description="longer segments "
                                                            "are split at their longest pause")):
        s, st = _services(request), _settings(request)
        labels = _check_labels(s, labels)
        upload = await read_upload(request, ("file",), max_parts=st.max_parts)
        options = {"min_silence_ms": min_silence_ms, "speech_pad_ms": speech_pad_ms, "max_segment_s": max_segment_s}
        with _model_slot(request):  # its segments are batched within the request
            res = await _in_thread(request, _segments, s, st, upload.data, labels, options)
        return _out(request, {**res.to_dict(), "message": res.message, "status": "success", "model": s.audio.name})

    @app.get("/emotions/", response_model=schemas.EmotionsResponse, response_model_exclude_none=True,
             responses={400: ERRORS[400], 401: ERRORS[401]}, dependencies=auth, tags=["speech"],
             summary="The model's labels (seed 002)")
    async def emotions(request: Request, labels: str | None = LABELS_QUERY):
        s = _services(request)
        labels = _check_labels(s, labels)
        names = s.audio.output_labels(labels)
        return _out(request, {"emotions": names, "count": len(names),
                              "unsupported_labels": s.audio.unsupported_labels(labels) or None})

    @app.get("/music-moods/", response_model=dict[str, str],
             responses={400: ERRORS[400], 401: ERRORS[401]}, dependencies=auth, tags=["speech"],
             summary="Music mood per label (seed 002): {emotion: mood}; in mock mode the mapping stays the "
                     "same and the X-Emovox-Mock: true header says so")
    async def music_moods(request: Request, labels: str | None = LABELS_QUERY):
        s = _services(request)
        names = s.audio.output_labels(_check_labels(s, labels))
        return {n: music_mood(n) for n in names}  # the bare mapping, as seed 002's clients read it


def _add_text_routes(app: FastAPI) -> None:
    """Text emotion, and the streaming WebSocket."""
    auth = [Depends(require_key)]

    @app.post("/predict-text/", response_model=schemas.TextResponse | schemas.TextBatchResponse,
              response_model_exclude_none=True,
              responses={400: ERRORS[400], 401: ERRORS[401], 413: ERRORS[413], 422: ERRORS[422],
                         503: {"model": schemas.ErrorResponse, "description": "no text model available"}},
              dependencies=auth, tags=["text"], summary="Multi-label text emotion (seed 004)")
    async def predict_text(request: Request, body: schemas.TextRequest,
                           labels: str = Query("goemotions", description="goemotions, ekman or audio7")):
        s = _services(request)
        if s.text is None:
            retry = {"Retry-After": "2"} if s.text_info.get("loading") else None
            raise ApiError(503, f"text emotion model unavailable: {s.text_info.get('reason')}",
                           {"text_model": s.text_info}, headers=retry)
        texts = [body.text] if body.text is not None else list(body.texts or [])
        try:
            results = await _in_thread(request, s.text.predict, texts, labels=labels)
        except ValueError as e:  # TextError (empty text), LabelError (labels=)
            raise ApiError(400, str(e)) from e
        rows = [{k: r.to_dict()[k] for k in schemas.TextResult.model_fields} for r in results]
        name = s.text_info.get("name") or "text"
        if body.text is not None:
            return _out(request, {**rows[0], "status": "success", "model": name}, mock=s.text_mock)
        return _out(request, {"status": "success", "results": rows, "count": len(rows), "model": name},
                    mock=s.text_mock)

    # -- streaming ----------------------------------------------------------------------------
    @app.websocket("/stream")
    async def stream(ws: WebSocket, labels: str | None = None, sample_rate_hz: int = 16000,
                     api_key: str | None = None, final_answer: str = "last", segments: bool = False):
        await _stream(ws, labels, sample_rate_hz, api_key, final_answer, segments)


def _add_operations_routes(app: FastAPI) -> None:
    """Probes and metrics for orchestrators and monitoring (open, like ``GET /``)."""

    @app.get("/healthz", response_model=schemas.Probe, tags=["service"], summary="Liveness: the process answers",
             responses={503: {"model": schemas.ErrorResponse, "description": "the models failed to load"}})
    async def healthz(request: Request):
        failed = getattr(request.app.state, "load_error", None)
        if failed:
            raise _not_ready(request.app)
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.Probe, tags=["service"],
             summary="Readiness: the models are loaded and requests are taken",
             responses={503: {"model": schemas.ErrorResponse, "description": "still loading (Retry-After), or failed"}})
    async def readyz(request: Request):
        if getattr(request.app.state, "services", None) is None:
            raise _not_ready(request.app)
        return {"status": "ok"}

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics (text format)",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics(request: Request) -> Response:
        body, content_type = request.app.state.metrics.exposition()
        return Response(body, media_type=content_type)


async def _ws_fail(ws: WebSocket, message: str, code: int, **detail: Any) -> None:
    """Send an error body, then close the WebSocket with ``code`` (quietly when the client has gone)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_json(_out(ws, error_body(message, detail or None)))
        await ws.close(code=code, reason=message[:120])


async def _open_stream(ws: WebSocket, labels: str | None, sample_rate_hz: int, api_key: str | None,
                       final_answer: str):
    """Check the key and parameters of ``WS /stream`` and open the model's streaming session.
    -> ``(session, resampler or None)``, or None after closing the socket with 1008."""
    s, st = _services(ws), _settings(ws)
    auth = ws.headers.get("authorization", "")
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    if not _key_ok(st.api_key, ws.headers.get("x-api-key"), bearer, api_key):
        await _ws_fail(ws, "missing or invalid API key: send the X-API-Key header or ?api_key=", WS_POLICY)
        return None
    try:
        labels = _check_labels(s, labels)
    except ApiError as e:
        await _ws_fail(ws, e.message, WS_POLICY)
        return None
    if not 8000 <= sample_rate_hz <= 192000:
        await _ws_fail(ws, f"sample_rate_hz must be between 8000 and 192000, got {sample_rate_hz}", WS_POLICY)
        return None
    model_sr = s.audio.sample_rate_hz
    resampler = None
    if sample_rate_hz != model_sr:
        import soxr

        resampler = soxr.ResampleStream(sample_rate_hz, model_sr, 1, dtype="float32")
    try:
        session = s.audio.stream(labels=labels, window_s=st.stream_window_s, max_buffer_s=st.max_duration_s,
                                 final_answer=final_answer)
    except ValueError as e:
        await _ws_fail(ws, str(e), WS_POLICY)
        return None
    return session, resampler


async def _stream(ws: WebSocket, labels: str | None, sample_rate_hz: int, api_key: str | None,
                  final_answer: str = "last", segments: bool = False) -> None:
    """``WS /stream``: binary 16-bit little-endian PCM chunks in, one JSON update per chunk out.

    Text message ``{"event": "end"}`` asks for the final result (``"final": true``), after which
    the server closes (1000). ``{"event": "reset"}`` starts over. A frame with an odd byte count
    (or no bytes before any audio) is answered with an error message and dropped; the connection
    stays usable. Streams longer than ``EMOVOX_MAX_DURATION_S`` (a frame shorter than
    :data:`MIN_WS_FRAME_S` counts as that long), binary frames larger than
    ``EMOVOX_MAX_UPLOAD_MB`` and text messages over :data:`MAX_WS_TEXT_BYTES` are closed with 1009;
    a wrong API key or bad parameters with 1008. ``final_answer=mean`` (frame-by-frame models):
    every update and the final one report the mean of every frame's probabilities instead of the last frame's.
    ``segments=true``: speech events too (:class:`emovox.segments.live.LiveSegments`): ``{"event":
    "speech_start"}`` as speech starts and ``{"event": "speech_end"}`` with the utterance's emotion as it ends.
    """
    _services(ws)  # still loading: refused before the socket is accepted
    await ws.accept()
    opened = await _open_stream(ws, labels, sample_rate_hz, api_key, final_answer)
    if opened is None:
        return
    stream = _StreamState(ws, *opened, sample_rate_hz)
    if segments:
        from ..segments.live import LiveSegments

        stream.live = LiveSegments(_services(ws).audio, labels=stream.session.labels)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data is not None and not await stream.audio(data):
                return
            if text is not None and not await stream.control(text):
                return
    except WebSocketDisconnect:  # the client went away (mid-stream, or while an answer was being sent)
        return
    except AudioError as e:
        await _ws_fail(ws, str(e), WS_POLICY)


class _StreamState:
    """One ``WS /stream`` session: its model session, resampler and the audio received so far."""

    def __init__(self, ws: WebSocket, session: Any, resampler: Any, sample_rate_hz: int):
        self.ws, self.session, self.resampler = ws, session, resampler
        self.settings = _settings(ws)
        self.max_samples = int(self.settings.max_duration_s * sample_rate_hz)
        # every frame is answered by a model run: one shorter than MIN_WS_FRAME_S counts as that long
        # against the limit, so 1-sample frames cannot buy 16000 model runs per second of audio
        self.min_frame = int(MIN_WS_FRAME_S * sample_rate_hz)
        self.received = 0
        self.live: Any = None  # segments=true: the stream's speech events

    def _push(self, x: np.ndarray) -> list[dict[str, Any]]:
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x)
        return self.session.push(x) + (self.live.push(x) if self.live is not None and x.size else [])

    def _finish(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        events: list[dict[str, Any]] = []
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                self.session.push(tail)
                events += self.live.push(tail) if self.live is not None else []
        if self.live is not None and self.received:
            events += self.live.finish()
        return events, self.session.finish()

    async def _send_error(self, message: str, code: str, **detail: Any) -> None:
        await self.ws.send_json(_out(self.ws, {**error_body(message, detail or None), "code": code}))

    async def audio(self, data: bytes) -> bool:
        """Answer one binary frame; False once the socket is closed."""
        ws, st = self.ws, self.settings
        if len(data) > st.max_upload_bytes:
            await _ws_fail(ws, f"frame too large: {len(data)} bytes, more than {st.max_upload_mb:g} MiB "
                               "(EMOVOX_MAX_UPLOAD_MB); send shorter chunks", WS_TOO_BIG, bytes=len(data))
            return False
        if len(data) % 2:
            await self._send_error(f"bad frame: 16-bit PCM needs an even number of bytes, got {len(data)}; "
                                   "frame dropped", "bad_frame", bytes=len(data))
            return True
        self.received += max(len(data) // 2, self.min_frame)
        if self.received > self.max_samples:
            await _ws_fail(ws, f"stream too long: more than {st.max_duration_s:g} s of audio (EMOVOX_MAX_DURATION_S; "
                               f"frames shorter than {MIN_WS_FRAME_S * 1000:g} ms count as {MIN_WS_FRAME_S * 1000:g} ms)",
                           WS_TOO_BIG)
            return False
        updates = await _in_thread(ws, self._push, pcm16_to_float(data))
        if not updates:  # an empty frame before any audio: nothing to answer yet
            await self._send_error("bad frame: no audio samples yet; frame dropped", "bad_frame", bytes=0)
        for update in updates:
            await ws.send_json(_out(ws, {**update, "status": "success", "final": False}))
        return True

    async def control(self, text: str) -> bool:
        """Answer one text message (``end``, ``reset``, or an error); False once the socket is closed."""
        ws = self.ws
        if len(text) > MAX_WS_TEXT_BYTES:
            await _ws_fail(ws, f"text message too large: {len(text)} characters, more than {MAX_WS_TEXT_BYTES}; "
                               'text messages are {"event": "end"} or {"event": "reset"}', WS_TOO_BIG)
            return False
        try:
            event = json.loads(text).get("event")
        except (ValueError, AttributeError, RecursionError):
            event = None
        if event == "end":
            events, final = await _in_thread(ws, self._finish)
            for event in events:
                await ws.send_json(_out(ws, {**event, "status": "success", "final": False}))
            if final is None:
                await ws.send_json(_out(ws, {**error_body("no audio was received"), "final": True}))
            else:
                await ws.send_json(_out(ws, {**final, "status": "success", "final": True}))
            await ws.close(code=WS_NORMAL)
            return False
        if event == "reset":
            self.session.reset()
            if self.live is not None:
                self.live.reset()
            self.received = 0
            await ws.send_json(_out(ws, {"status": "success", "event": "reset"}))
            return True
        await self._send_error('unknown message: send binary 16-bit PCM chunks, {"event": "end"} or '
                               '{"event": "reset"}', "bad_message")
        return True

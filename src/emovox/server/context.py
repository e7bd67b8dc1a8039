"""What every route reads from the request: the loaded services and settings, worker threads, label and timeline checks, error responses for the API docs."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Query, Request, WebSocket

from emovox.audio import AudioError
from emovox.data.labels import TAXONOMIES, LabelError
from emovox.server import schemas
from emovox.server.batching import DynamicBatcher, Overloaded
from emovox.server.clips import AUDIO_FORMATS, audio_error, check_header
from emovox.server.observability import ARRIVED
from emovox.server.services import Services
from emovox.server.settings import Settings
from emovox.server.uploads import ApiError

T = TypeVar("T")
#: Most windows one timeline request may compute (duration / hop_s), so one request cannot pin a CPU for minutes.
MAX_TIMELINE_WINDOWS = 1200

LABELS_QUERY = Query(None, description="fold scores into another label set, one the loaded model's labels map into "
                                       f"(of {', '.join(TAXONOMIES)}); GET /emotions/ lists this model's as "
                                       "label_sets", examples=["basic5"])

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


def multipart_doc(*names: str) -> dict[str, Any]:
    props = {n: {"type": "string", "format": "binary",
                 "description": f"audio file ({AUDIO_FORMATS}); any rate, mono or stereo"} for n in names}
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if len(names) == 1:
        schema["required"] = list(names)
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}



def loaded_services(request: Request | WebSocket) -> Services:
    """The loaded models; 503 with ``Retry-After`` while they load in the background."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        request.app.state.metrics.shed.labels("loading").inc()
        raise not_ready(request.app)
    return services


def not_ready(app: FastAPI) -> ApiError:
    failed = getattr(app.state, "load_error", None)
    if failed:
        return ApiError(503, f"the models failed to load: {failed}", {"reason": "load_failed"})
    return ApiError(503, "the service is starting: the models are still loading; retry shortly",
                    {"reason": "loading", "retry_after_s": 1}, headers={"Retry-After": "1"})


def app_settings(request: Request | WebSocket) -> Settings:
    return request.app.state.settings


def mark_mock(request: Request | WebSocket, payload: dict[str, Any], *, mock: bool | None = None) -> dict[str, Any]:
    """Mark an answer ``"mock": true`` when the model that gave it is a mock (default: the speech model)."""
    if loaded_services(request).mock if mock is None else mock:
        payload["mock"] = True
    return payload


def mock_flag(app: FastAPI) -> Callable[[], bool]:
    """Whether the running service serves any mock model (known once the models are loaded)."""
    def flag() -> bool:
        services = getattr(app.state, "services", None)
        return bool(services is not None and services.any_mock)
    return flag


async def in_thread(request: Request | WebSocket, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (decoding, inference) in a worker thread, at most ``max_concurrency`` at once."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=request.app.state.limiter)


def label_sets(services: Services) -> list[str]:
    """The label sets the loaded speech model's labels fold into: exactly what ``labels=`` accepts."""
    sets = []
    for name in TAXONOMIES:
        try:
            services.audio.output_labels(name)
        except LabelError:
            continue
        sets.append(name)
    return sets


def check_labels(services: Services, labels: str | None) -> str | None:
    """``labels=`` must name a taxonomy (never a path or a mapping) the model's labels fold into."""
    if labels is None or labels == "":
        return None
    accepted = label_sets(services)
    if labels not in accepted:
        what = f"unknown labels={labels!r}" if labels not in TAXONOMIES else \
            f"labels={labels!r}: this speech model's labels do not fold into it"
        raise ApiError(400, f"{what}; accepted: {', '.join(accepted)}", {"accepted": accepted})
    return labels


def time_left(request: Request) -> float:
    """Seconds left of the request's timeout, counted from its arrival (reading its upload included)."""
    arrived = getattr(request.state, ARRIVED, None)
    waited = 0.0 if arrived is None else time.monotonic() - arrived
    return app_settings(request).request_timeout_s - waited


@contextlib.contextmanager
def model_slot(request: Request) -> Iterator[DynamicBatcher]:
    """A place in the queue for one request's model work (decoding, batching, inference): 503 with
    ``Retry-After`` when none is free, when the request waits too long, or while shutting down."""
    batcher: DynamicBatcher = request.app.state.batcher
    try:
        if time_left(request) <= 0:  # it waited its whole time before reaching the queue: shed it now
            raise batcher.timed_out()
        with batcher.admit():
            yield batcher
    except Overloaded as e:  # TimedOut too
        request.app.state.metrics.shed.labels(e.reason).inc()
        raise ApiError(503, str(e), {"reason": e.reason, "retry_after_s": e.retry_after_s},
                       headers={"Retry-After": str(e.retry_after_s)}) from e


def timeline_windows(services: Services, settings: Settings, data: bytes, labels: str | None, window_s: float, hop_s: float):
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


def speech_segments(services: Services, settings: Settings, data: bytes, labels: str | None, options: dict):
    """``POST /predict-segments/``: the upload's speech segments, each classified (:mod:`emovox.segments`)."""
    check_header(data, max_duration_s=settings.max_duration_s)
    try:
        return services.audio.segments(data, labels=labels, max_duration_s=settings.max_duration_s, **options)
    except AudioError as e:
        raise audio_error(e) from e


def round6(x: float) -> float:
    return round(float(x), 6)

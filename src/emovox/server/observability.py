"""Prometheus metrics (the official ``prometheus-client``) and structured access logs.

Metrics, served at ``GET /metrics`` in Prometheus' text format:

| name | type | labels | what |
|---|---|---|---|
| ``emovox_http_requests_total`` | counter | method, route, status | answered HTTP requests (``route`` is the route template; ``unmatched`` for unknown paths) |
| ``emovox_http_request_duration_seconds`` | histogram | method, route | time from the request's arrival to the end of its answer |
| ``emovox_batch_size`` | histogram | – | clips per model batch |
| ``emovox_batch_duration_seconds`` | histogram | – | time one batch spends in the model |
| ``emovox_queue_depth`` | gauge | – | requests admitted and not answered yet (decoding, waiting for a batch, in one) |
| ``emovox_requests_shed_total`` | counter | reason | requests answered 503: ``queue_full``, ``timeout``, ``loading`` |
| ``emovox_model_load_seconds`` | gauge | model | seconds each model took to load (``speech``, ``text``) |

With several worker processes (``emovox serve --workers N``) every process writes its values to
``$PROMETHEUS_MULTIPROC_DIR`` and any worker's ``/metrics`` answers for all of them
(prometheus-client's multiprocess mode; ``emovox serve`` sets the folder up).

Access logs: one record per HTTP request on the ``emovox.access`` logger, with the fields
``method``, ``path`` (no query string: it may hold ``api_key``), ``route``, ``status``,
``duration_ms``, ``bytes``, ``client`` and ``request_id`` (the client's ``X-Request-ID`` when it
sends a sane one, else a new one; echoed in the response). ``emovox serve`` writes them as JSON
lines (python-json-logger) on stdout: :func:`log_config`.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import time
import uuid
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("emovox.access")

#: ``request.state`` key: when the request arrived (``time.monotonic()``), for timeouts counted from then.
ARRIVED = "emovox_arrived"
#: The environment variable prometheus-client reads for its multiprocess mode.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_VARIABLE) or None


class Metrics:
    """The service's metrics, in a registry of their own (several apps can live in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("emovox_http_requests", "HTTP requests answered, by method, route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("emovox_http_request_duration_seconds", "HTTP request latency, seconds",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("emovox_batch_size", "clips per model batch", buckets=BATCH_SIZE_BUCKETS,
                                    registry=r)
        self.batch_seconds = Histogram("emovox_batch_duration_seconds", "time one batch spends in the model, seconds",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("emovox_queue_depth", "requests admitted and not answered yet (decoding, waiting "
                                 "for a batch, or in one)", multiprocess_mode="livesum", registry=r)
        self.shed = Counter("emovox_requests_shed", "requests answered 503: queue_full, timeout or loading",
                            ["reason"], registry=r)
        self.model_load = Gauge("emovox_model_load_seconds", "seconds each model took to load", ["model"],
                                multiprocess_mode="livemax", registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def change_depth(self, delta: int) -> None:
        self.queue_depth.inc(delta)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of ``GET /metrics``: this process's metrics, or every worker's."""
        if multiprocess_dir() is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged), CONTENT_TYPE_LATEST

    @staticmethod
    def process_exited() -> None:
        """Drop this worker's live gauges from the shared folder (multiprocess mode; at shutdown)."""
        if multiprocess_dir() is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


class ObservabilityMiddleware:
    """ASGI middleware: counts and times every HTTP request and logs it on ``emovox.access``."""

    def __init__(self, app: ASGIApp, metrics: Metrics, router: Router):
        self.app, self.metrics, self.router = app, metrics, router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        scope.setdefault("state", {})[ARRIVED] = time.monotonic()
        request_id = _request_id(scope)
        answer = {"status": 500, "bytes": 0}  # an exception escaping the app becomes a 500

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", request_id.encode())]}
            elif message["type"] == "http.response.body":
                answer["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            self._record(scope, answer["status"], answer["bytes"], time.perf_counter() - t0, request_id)

    def _record(self, scope: Scope, status: int, n_bytes: int, seconds: float, request_id: str) -> None:
        method, route = scope["method"], self._route(scope)
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(seconds)
        client = scope.get("client")
        access_log.info("%s %s %d", method, scope["path"], status, extra={
            "method": method, "path": scope["path"], "route": route, "status": status,
            "duration_ms": round(1000 * seconds, 2), "bytes": n_bytes,
            "client": f"{client[0]}:{client[1]}" if client else None, "request_id": request_id})

    def _route(self, scope: Scope) -> str:
        """The route template (bounded label values), also for requests answered before routing (413)."""
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.router.routes if r.matches(scope)[0] == Match.FULL), None)
        return getattr(route, "path", None) or "unmatched"


def _request_id(scope: Scope) -> str:
    for k, v in scope.get("headers", ()):
        if k == b"x-request-id":
            value = v.decode("latin-1")
            if _REQUEST_ID.fullmatch(value):
                return value
    return uuid.uuid4().hex


def log_config(*, access: bool = True) -> dict[str, Any]:
    """uvicorn's logging configuration with ``emovox.access`` as JSON lines on stdout (python-json-logger)
    in place of uvicorn's text access log; ``access=False`` switches access logs off."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["formatters"]["json"] = {
        "()": "pythonjsonlogger.json.JsonFormatter",
        "fmt": "%(levelname)s %(name)s %(message)s",
        "rename_fields": {"levelname": "level", "name": "logger"},
        "timestamp": "time",  # ISO 8601, UTC
    }
    cfg["handlers"]["emovox_access"] = {"formatter": "json", "class": "logging.StreamHandler",
                                        "stream": "ext://sys.stdout"}
    cfg["loggers"]["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}
    cfg["loggers"]["emovox.access"] = {"handlers": ["emovox_access"] if access else [],
                                       "level": "INFO" if access else "WARNING", "propagate": False}
    return cfg

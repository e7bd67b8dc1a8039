"""``emovox serve --engine ray``: the same HTTP API (emovox.server's FastAPI app) on Ray Serve replicas.

Each replica (:class:`EmovoxReplica`) builds the app of :func:`emovox.server.app.create_app` with
the service's settings and serves it through ``@serve.ingress``: every route, error, probe and
metric is the one ``emovox serve`` has. The models load in the app's start-up, inside the
replica (Ray Serve runs the ASGI lifespan), so a replica takes traffic once its models are in. What
changes is how clips from concurrent requests are batched: :class:`ServeBatcher` hands each
decoded clip to Ray Serve's ``@serve.batch`` (``max_batch_size`` = the service's ``max_batch``,
``batch_wait_timeout_s`` = ``batch_wait_ms``), and the batch runs the function the local
service's batcher runs (:func:`emovox.server.clips.classify_clips`, one bad clip failing alone).
Admission (``max_queue``, 503 + ``Retry-After``) and timeouts stay per replica, as per worker.

Replicas: a fixed number (``num_replicas``), or Ray Serve autoscaling between
``min_replicas`` and ``max_replicas`` aiming at ``target_ongoing_requests`` per replica.

On a cluster, :func:`app_builder` is the import path for ``serve run`` / ``serve deploy`` and
KubeRay's RayService (docs/scale.md)::

    serve run emovox.scale.ray_serve:app_builder AUDIO_MODEL_DIR=default replicas=4
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from emovox.errors import ServeStartError
from emovox.scale.options import SERVE_HEADROOM, RayOptions, ServeOptions
from emovox.scale.ray_support import ray_session, require_ray
from emovox.server.app import create_app
from emovox.server.batching import DynamicBatcher, Overloaded
from emovox.server.settings import Settings

#: Ray Serve's logging for ``emovox serve --engine ray``: warnings and errors, no access lines (the
#: replicas' own logs keep everything: /tmp/ray/session_latest/logs/serve/).
QUIET = {"log_level": "WARNING", "enable_access_log": False}
#: Ray Serve's start-up checks, sized for a node busy with other work: its proxy's readiness check (Ray's
#: default 5 s, missed three times on a loaded node, then the proxy is killed) and health checks. A variable
#: already set in the environment wins.
READINESS_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
                 "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "10"}
#: a replica's own health check (Ray's default 30 s): loading a model on a busy node takes longer
REPLICA_HEALTH_CHECK_TIMEOUT_S = 60.0


class ServeBatcher(DynamicBatcher):
    """The service's batcher with Ray Serve's ``@serve.batch`` forming the batches: ``submit(item)``
    is the ``@serve.batch`` function, which calls :meth:`run_items` with the batch it formed.
    Admission, timeouts and metrics are :class:`DynamicBatcher`'s."""

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *, submit: Callable, **kwargs: Any):
        super().__init__(run_batch, **kwargs)
        self._submit = submit

    async def start(self) -> None:  # no dispatcher: @serve.batch forms the batches
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=self.name)

    async def run(self, item: Any, *, timeout_s: float | None = None) -> Any:
        if self._closed or self._executor is None:
            raise Overloaded("the service is not running", 1, "closed")
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if timeout_s is not None and timeout_s <= 0:
            raise self.timed_out()
        try:
            ok, value = await asyncio.wait_for(self._submit(item), timeout_s)
        except asyncio.TimeoutError:
            raise self.timed_out() from None
        if not ok:
            raise value
        return value

    async def run_items(self, items: list[Any]) -> list[tuple[bool, Any]]:
        """One batch on an inference thread -> ``[(ok, result or exception)]`` (never raises)."""
        t0 = time.perf_counter()
        outcomes = await asyncio.get_running_loop().run_in_executor(self._executor, self._call, items)
        seconds = time.perf_counter() - t0
        rate = len(items) / max(seconds, 1e-9)
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        if self._on_batch is not None:
            self._on_batch(len(items), seconds)
        return outcomes


class EmovoxReplica:
    """A Ray Serve replica of the HTTP service (wrapped by ``serve.ingress()`` in :func:`build_app`)."""

    def __init__(self, settings: Settings, concurrent_batches: int = 1):
        from ray import serve

        self.settings = settings
        self._app = None
        self._batch = serve.batch(max_batch_size=int(settings.max_batch),
                                  batch_wait_timeout_s=float(settings.batch_wait_ms) / 1000.0,
                                  max_concurrent_batches=concurrent_batches)(self._run_items)

    async def _run_items(self, items: list[Any]) -> list[tuple[bool, Any]]:
        return await self._app.state.batcher.run_items(items)

    def __serve_build_asgi_app__(self):
        self._app = create_app(self.settings, batcher=functools.partial(ServeBatcher, submit=self._batch))
        return self._app


def deployment_options(settings: Settings, options: ServeOptions) -> dict[str, Any]:
    """``serve.deployment`` keyword arguments: replicas or autoscaling, CPUs, request limits."""
    kwargs: dict[str, Any] = {
        "name": options.name,
        "ray_actor_options": {"num_cpus": options.cpus_per_replica},
        # the app answers 503 + Retry-After past max_queue itself; Serve only needs to let that many through
        "max_ongoing_requests": int(settings.max_queue) + SERVE_HEADROOM,
        "graceful_shutdown_timeout_s": float(settings.request_timeout_s),
        "max_constructor_retry_count": 3,  # a model that does not load fails the deployment, not 20 tries later
        "health_check_timeout_s": REPLICA_HEALTH_CHECK_TIMEOUT_S,
    }
    if options.max_replicas is None:
        kwargs["num_replicas"] = options.replicas
    else:
        kwargs["autoscaling_config"] = {
            "min_replicas": options.replicas if options.min_replicas is None else options.min_replicas,
            "initial_replicas": options.replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests or float(settings.max_batch),
        }
    return kwargs


def build_app(settings: Settings, options: ServeOptions = ServeOptions()):
    """The Ray Serve application (``serve.run(build_app(...))``). Each replica runs
    ``ceil(cpus_per_replica)`` batches at once, with one torch thread each unless set."""
    serve = require_ray("serve").serve
    per_replica = max(1, math.ceil(options.cpus_per_replica))
    settings = settings.replace(max_concurrency=per_replica,
                                torch_threads=1 if settings.torch_threads is None else settings.torch_threads)
    deployment = serve.deployment(**deployment_options(settings, options))(serve.ingress()(EmovoxReplica))
    return deployment.bind(settings, per_replica)


def app_builder(args: dict[str, str]):
    """``serve run emovox.scale.ray_serve:app_builder KEY=value ...`` (or a Serve config's
    ``import_path`` and ``args``): UPPER_CASE keys are the service's variables (``AUDIO_MODEL_DIR``,
    ``EMOVOX_MAX_BATCH``, ...: docs/server.md), over the environment; lower-case keys are
    :class:`ServeOptions` (``replicas``, ``max_replicas``, ``min_replicas``, ``target_ongoing_requests``,
    ``cpus_per_replica``)."""
    env = {k: str(v) for k, v in args.items() if k.isupper()}
    known = {"replicas": int, "max_replicas": int, "min_replicas": int, "target_ongoing_requests": float,
             "cpus_per_replica": float, "name": str}
    unknown = sorted(k for k in args if not k.isupper() and k not in known)
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; known: {', '.join(known)} and the "
                         "service's variables (AUDIO_MODEL_DIR, EMOVOX_MAX_BATCH, ...)")
    opts = {k: known[k](v) for k, v in args.items() if k in known}
    return build_app(Settings.from_env({**os.environ, **env}), ServeOptions(**opts))


def serve_forever(settings: Settings, options: ServeOptions, ray_options: RayOptions, *,
                  stop: threading.Event | None = None) -> None:
    """``emovox serve --engine ray``: deploy, print where, serve until Ctrl-C or SIGTERM (or ``stop``), then
    take the application down (and the local Ray, when this started one)."""
    stop = stop or threading.Event()
    if ray_options.address is None and settings.use_mock_models is not True:
        from emovox.inference import resolve_model_path

        resolve_model_path(settings.model)  # same machine: a wrong model is one line before Ray starts
    with ray_session(ray_options, part="serve", env=READINESS_ENV) as ray:
        serve = ray.serve
        try:
            serve.start(http_options={"host": options.host, "port": options.port}, logging_config=QUIET)
        except Exception as e:  # noqa: BLE001 - Ray raises its own types (ActorDiedError, RayServeException, ...)
            raise start_failure(e, "Ray Serve's HTTP proxy", options) from e
        try:
            try:
                serve.run(build_app(settings, options), name=options.name, route_prefix="/", blocking=False,
                          logging_config=QUIET)
            except Exception as e:  # noqa: BLE001
                raise start_failure(e, f"the {options.name!r} deployment's replicas", options) from e
            host = f"[{options.host}]" if ":" in options.host else options.host
            print(f"emovox serve: http://{host}:{options.port}/ on Ray Serve ({_replicas_text(options)}; "
                  f"probes /healthz /readyz, per-replica metrics /metrics); Ctrl-C stops", file=sys.stderr)
            _wait(stop)
        finally:
            serve.delete(options.name)
            if ray_options.address is None:
                serve.shutdown()


def start_failure(e: BaseException, what: str, options: ServeOptions) -> ServeStartError:
    """One line for a Ray Serve start that failed: what did not start, why in a few words, and what to try."""
    first = (str(e).strip().splitlines() or [""])[0][:200]
    ready = os.environ.get("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", READINESS_ENV["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"])
    return ServeStartError(
        f"{what} did not start on {options.host}:{options.port} ({type(e).__name__}: {first}); on a busy node "
        f"give it longer (RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S, now {ready} s), check that the port is free, or "
        "serve without Ray (emovox serve --engine uvicorn)")


def _replicas_text(options: ServeOptions) -> str:
    if options.max_replicas is None:
        return f"{options.replicas} replica(s)"
    return f"autoscaling {options.min_replicas or options.replicas}-{options.max_replicas} replicas"


def _wait(stop: threading.Event) -> None:
    """Until ``stop`` is set, Ctrl-C, or SIGTERM (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass

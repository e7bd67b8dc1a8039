"""emovox serve: the HTTP service (endpoints of the Keras backend CNN, the FastAPI wav2vec2 hybrid and the text and audio evaluation kit, WebSocket streaming) and its web page."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading

from emovox.scale.options import add_serve_arguments
from emovox.server.settings import settings_default

HELP = "serve the HTTP API and a web page at /ui (settings from flags, else environment variables, else ./.env)"

log = logging.getLogger("emovox.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--model", default=None,
                   help="speech model: an emovox model folder, a Hugging Face audio-classification folder, or a "
                        "shipped name (env AUDIO_MODEL_DIR; default: the shipped default)")
    p.add_argument("--text-model", default=None,
                   help="text model folder (emovox's, or a Hugging Face sequence classifier with labels.json and "
                        "inference_config.json), a shipped name (default, mpnet, ensemble), or 'none' (env "
                        "TEXT_MODEL_DIR; default: the shipped default if any)")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence below which answers say low_confidence (env CONFIDENCE_THRESHOLD; default "
                        f"{settings_default('threshold'):.2f})")
    p.add_argument("--max-upload-mb", type=float, default=None,
                   help=f"largest request body in MiB (env EMOVOX_MAX_UPLOAD_MB; default {settings_default('max_upload_mb'):g})")
    p.add_argument("--max-duration-s", type=float, default=None,
                   help="longest clip or stream in seconds (env EMOVOX_MAX_DURATION_S; default "
                        f"{settings_default('max_duration_s'):g})")
    p.add_argument("--max-parts", type=int, default=None,
                   help="most parts of a multipart upload, checked while it streams in; past it 413 "
                        f"(env EMOVOX_MAX_PARTS; default {settings_default('max_parts')})")
    p.add_argument("--api-key", default=None,
                   help="require this key (X-API-Key or Authorization: Bearer); prefer env EMOVOX_API_KEY, "
                        "since flags show in the process list")
    p.add_argument("--cors-origins", default=None,
                   help="comma-separated origins allowed to call the API from browsers (env EMOVOX_CORS_ORIGINS)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, each with its own models and batches (see docs/server.md for when "
                        "more than one helps)")
    p.add_argument("--limit-concurrency", type=int, default=None,
                   help="uvicorn: connections at once per worker before answering 503 (bounds the memory held "
                        "by simultaneous uploads, each up to --max-upload-mb)")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="inference threads per worker, each running one batch at a time, and as many decoding "
                        "threads (env EMOVOX_MAX_CONCURRENCY; default min(4, cores))")
    p.add_argument("--max-batch", type=int, default=None,
                   help="most clips from concurrent requests classified together; 1 switches batching off "
                        f"(env EMOVOX_MAX_BATCH; default {settings_default('max_batch')})")
    p.add_argument("--batch-wait-ms", type=float, default=None,
                   help="longest a clip waits for others to join its batch (env EMOVOX_BATCH_WAIT_MS; default "
                        f"{settings_default('batch_wait_ms'):g})")
    p.add_argument("--max-queue", type=int, default=None,
                   help="clip and timeline requests in a worker at once (decoding, queued, running); past it 503 "
                        f"with Retry-After (env EMOVOX_MAX_QUEUE; default {settings_default('max_queue')})")
    p.add_argument("--request-timeout-s", type=float, default=None,
                   help="longest a request waits for the model, queue and inference; past it 503 "
                        f"(env EMOVOX_REQUEST_TIMEOUT_S; default {settings_default('request_timeout_s'):g})")
    p.add_argument("--load-in-background", action="store_const", const=True, default=None,
                   help="bind the port first and load the models after: /healthz answers at once, /readyz and "
                        "the model routes 503 until they are loaded (env EMOVOX_LOAD_IN_BACKGROUND; default: "
                        "load first, and refuse to start without a usable model)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads per inference (env EMOVOX_TORCH_THREADS; default 1: requests run "
                        "in parallel instead, which is much faster on a busy CPU)")
    p.add_argument("--mock", nargs="?", const="true", default=None, choices=("true", "false", "auto"),
                   help="front-end development only: deterministic fake answers labelled \"mock\": true; 'auto': "
                        "real models, a mock only for a model that cannot be loaded (env USE_MOCK_MODELS; "
                        "default false)")
    p.add_argument("--env-file", default=None,
                   help="KEY=value file read for the settings above, below the environment and flags "
                        "('none': no file; default: $EMOVOX_ENV_FILE, else ./.env when it exists)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level")
    p.add_argument("--access-log", default="json", choices=["json", "off"],
                   help="one JSON line per request on stdout (method, path, route, status, duration_ms, bytes, "
                        "client, request_id), or none")
    p.add_argument("--engine", choices=["uvicorn", "ray"], default="uvicorn",
                   help="uvicorn: this machine (--workers processes); ray: Ray Serve replicas, on a local Ray or "
                        "--ray-address (docs/scale.md)")
    add_serve_arguments(p)


def run(args) -> int:
    try:
        import uvicorn
    except ImportError:
        print("emovox serve: error: the server needs its extras: pip install 'emovox[serve]'", file=sys.stderr)
        return 2
    from emovox.server.app import create_app
    from emovox.server.observability import log_config
    from emovox.server.services import finish_loading_text, load_services
    from emovox.server.settings import Settings

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    settings = Settings.from_env(
        model=args.model, text_model=args.text_model, threshold=args.threshold, max_upload_mb=args.max_upload_mb,
        max_duration_s=args.max_duration_s, api_key=args.api_key, cors_origins=args.cors_origins,
        max_concurrency=args.max_concurrency, use_mock_models=args.mock, torch_threads=args.torch_threads,
        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
        request_timeout_s=args.request_timeout_s, load_in_background=args.load_in_background, env_file=args.env_file,
        max_parts=args.max_parts,
    )
    if settings.torch_threads is None:
        settings = settings.replace(torch_threads=1)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the service "
                    "(set EMOVOX_API_KEY)", args.host)
    if args.engine == "ray":
        return _run_ray(args, settings)
    # Load the speech model before binding the port: a missing or broken model is one clear line, exit 2.
    # The shipped text model (not needed for the first speech request) loads beside the running service.
    services = None if settings.load_in_background else load_services(settings, text_in_background=True)
    if services is not None and services.text_info.get("loading"):
        threading.Thread(target=finish_loading_text, args=(settings, services), daemon=True,
                         name="emovox-text-load").start()
    host = f"[{args.host}]" if ":" in args.host else args.host
    mocks = [what for what, m in (("speech", services.mock), ("text", services.text_mock)) if services and m]
    print(f"emovox serve: http://{host}:{args.port}/  (web page /ui, API docs /docs, probes /healthz /readyz, "
          f"metrics /metrics){'  [MOCK MODELS: ' + ', '.join(mocks) + ']' if mocks else ''}", file=sys.stderr)
    uv = {"host": args.host, "port": args.port, "log_level": args.log_level, "limit_concurrency": args.limit_concurrency,
          "access_log": False, "log_config": log_config(access=args.access_log == "json"),
          "ws_max_size": settings.max_upload_bytes}  # a bigger WebSocket frame is refused (1009) before it is buffered
    if args.workers == 1:
        uvicorn.run(create_app(settings, services=services), **uv)
    else:
        del services  # each worker loads its own, from the same settings passed through the environment
        _run_workers(settings, args.workers, uv)
    return 0


def _run_workers(settings, workers: int, uv: dict) -> None:
    """``uvicorn --workers``: the settings travel in the environment; the workers' metrics are merged
    through prometheus-client's multiprocess folder (a fresh one, removed afterwards, unless set)."""
    import uvicorn

    from emovox.server.observability import MULTIPROC_VARIABLE
    from emovox.server.settings import ENV_FILE_VARIABLE

    os.environ.update(settings.to_env())
    os.environ[ENV_FILE_VARIABLE] = "none"  # the settings are all in the environment now
    own_metrics_dir = MULTIPROC_VARIABLE not in os.environ
    if own_metrics_dir:
        os.environ[MULTIPROC_VARIABLE] = tempfile.mkdtemp(prefix="emovox-metrics-")
    try:
        uvicorn.run("emovox.server.app:create_app", factory=True, workers=workers, **uv)
    finally:
        if own_metrics_dir:
            shutil.rmtree(os.environ.pop(MULTIPROC_VARIABLE), ignore_errors=True)
    # The supervisor returns once told to stop (SIGTERM, Ctrl-C) and its workers are gone: leave now, as a
    # single-worker server does, not after seconds of tearing down the model this process loaded to check it.
    if threading.current_thread() is threading.main_thread():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _run_ray(args, settings) -> int:
    """``--engine ray``: the same app on Ray Serve replicas (each loads its own models)."""
    from emovox.scale.options import ray_options, serve_options
    from emovox.scale.ray_serve import serve_forever

    if args.workers != 1:
        raise ValueError("--workers runs uvicorn processes on this machine; with --engine ray use --replicas")
    serve_forever(settings, serve_options(args), ray_options(args))
    return 0

"""The HTTP service on Ray Serve (``emovox serve --engine ray``) under load, with 1 and 2 replicas.

For each replica count, a fresh Serve application on one local Ray (``--ray-num-cpus``) answers
the same levels as ``benchmarks.server_load`` (whose clients, clips and checks this reuses): every clip
alone (the reference answers, checked against the in-process ones), then N concurrent clients
posting real 3-4 s clips to ``/predict-emotion/`` (closed loop), every answer checked against the
clip's answer alone. Compare with ``benchmarks.server_load --workers 1`` and ``--workers 2`` (uvicorn).

    python -m benchmarks.ray_serve_load --model crnn --replicas 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
import time

from benchmarks.server_load import (
    DATA,
    Checker,
    Level,
    alone_answers,
    closed_loop,
    differs,
    in_process,
    real_clips,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_level(args, replicas: int, clips: list[bytes], inproc: list[dict]) -> tuple[Level, float]:
    """Deploy ``replicas`` replicas, run the level, take the application down -> (level, seconds to ready)."""
    import httpx

    from emovox.scale.options import RayOptions, ServeOptions
    from emovox.scale.ray_serve import serve_forever
    from emovox.server import Settings

    settings = Settings(model=args.model, text_model="none", max_duration_s=30.0, max_upload_mb=2.0,
                        max_batch=args.max_batch)
    options = ServeOptions(port=free_port(), replicas=replicas, cpus_per_replica=1.0, name=f"load{replicas}")
    stop = threading.Event()
    thread = threading.Thread(target=serve_forever, args=(settings, options, RayOptions()), kwargs={"stop": stop})
    t0 = time.perf_counter()
    thread.start()
    url = f"http://127.0.0.1:{options.port}"
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
        if not thread.is_alive():
            raise SystemExit("ray_serve_load: the Serve application did not start")
    ready_s = time.perf_counter() - t0
    try:
        expected = asyncio.run(alone_answers(url, clips))
        level = Level(f"{replicas} replica(s)", "good", f"{args.clients} clients")
        level.errors += [f"clip {k}: alone differs from in-process" for k, (e, w) in enumerate(zip(expected, inproc))
                         if differs(e, w)]
        asyncio.run(closed_loop(url, Checker(expected, [], clips), level, args.clients,
                                args.clients * args.requests_per_client, 300.0))
    finally:
        stop.set()
        thread.join()
    return level, ready_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="crnn")
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--ray-num-cpus", type=int, default=2)
    args = ap.parse_args()
    from emovox.scale.options import RayOptions
    from emovox.scale.ray_support import ray_session

    clips = [body for _, body in real_clips(DATA, args.clips)]
    rates, inproc = in_process(args.model, clips, batch_size=args.max_batch, threads=[1], passes=1,
                               max_duration_s=30.0)
    load0 = os.getloadavg()[0]
    rows = []
    with ray_session(RayOptions(num_cpus=args.ray_num_cpus), part="serve"):
        for n in [int(r) for r in args.replicas.split(",")]:
            rows.append(serve_level(args, n, clips, inproc))
    print(f"\nModel `{args.model}`; Ray Serve on a local Ray of {args.ray_num_cpus} CPUs, one CPU and one torch thread "
          f"per replica, @serve.batch max {args.max_batch}, 5 ms; {args.clips} real 3-4 s clips; "
          f"{os.cpu_count()} cores shared by clients, Ray and other jobs (load average {load0:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after). In-process peer: **{rates[1]:.1f} clips/s**.\n")
    print("| replicas | ready after s | requests | good answered (correct) | 503 | other 5xx / wrong | good/s | "
          "x in-process | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|---|")
    for lv, ready_s in rows:
        print(f"| {lv.mode} | {ready_s:.0f} | {lv.requests} | {len(lv.latencies)} | {lv.shed} | {len(lv.errors)} | "
              f"{lv.throughput:.1f} | {lv.throughput / rates[1]:.2f} | {lv.percentile_ms(50):.0f} | "
              f"{lv.percentile_ms(99):.0f} |")
    for lv, _ in rows:
        for e in lv.errors[:5]:
            print("  " + e, file=sys.stderr)
    return 1 if any(lv.errors for lv, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

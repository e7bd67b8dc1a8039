"""Load test of the HTTP service: a real ``uvicorn`` on 127.0.0.1, driven by httpx.AsyncClient.

The same model's in-process batch throughput (``EmotionModel.predict_batch`` on the same clips)
is measured first, in this run, as the peer. Then, for each batching mode (``off`` =
``--max-batch 1``, ``on`` = the service's defaults), a fresh server answers:

1. every clip alone (sequentially): the reference answers, checked against the in-process ones;
2. ``good``: N concurrent clients (closed loop) posting real 3-4 s clips (RAVDESS FLAC and
   CREMA-D Ogg/Opus from ../shared/data) to ``/predict-emotion/``: throughput, p50/p99 latency,
   5xx, and the ratio to the in-process throughput;
3. ``bad-mix``: the same with a fifth of the uploads bad (empty, truncated, not audio, too long,
   too large): every bad one must get its 4xx, every good one the clip's answer alone;
4. ``overload``: open-loop arrivals at 4x the throughput of step 2 for a short period: the service
   must shed with 503 (and no other 5xx), then answer normally again; its peak RSS is reported.

Every good answer is checked against the clip's answer alone (emotion and every probability
within 1e-5). Exit status 1 when any answer or status was wrong.

    python -m benchmarks.server_load                      # the shipped default model
    python -m benchmarks.server_load --model crnn         # a shipped name or a model folder
    python -m benchmarks.server_load --tiny --clips 8     # a tiny random CNN (tests the harness)

The machine is shared: absolute figures move between runs; ratios to the peer measured in the
same run are what the targets are about.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA

SR = 16000
DATA = DEFAULT_DATA
#: Idle connections are dropped by the client before uvicorn's 5 s keep-alive timeout closes them: reusing a
#: connection the server is closing at that moment fails on the client (a ReadError), whatever the service does.
KEEPALIVE_S = 2.0
#: Targets of issue 16 at 32 clients.
TARGET_RATIO, TARGET_P99_FACTOR = 0.7, 2.0


# -- clips ----------------------------------------------------------------------------------------

def real_clips(data: Path, n: int, *, min_s: float = 3.0, max_s: float = 4.0) -> list[tuple[str, bytes]]:
    """``n`` clips of ``min_s``-``max_s`` seconds, half RAVDESS, half CREMA-D, spread over speakers."""
    from emovox.audio import audio_info

    out: list[tuple[str, bytes]] = []
    for corpus, pattern in (("ravdess", "Actor_*/*.flac"), ("crema-d", "*.opus")):
        files = sorted((data / corpus).glob(pattern))
        want = n // 2 if corpus == "ravdess" else n - len(out)
        picked = 0
        for f in files[:: max(1, len(files) // (8 * want))]:
            body = f.read_bytes()
            if min_s <= audio_info(body).duration_s <= max_s:
                out.append((f"{corpus}/{f.name}", body))
                picked += 1
                if picked == want:
                    break
    if len(out) < n:
        raise SystemExit(f"server_load: only {len(out)} clips of {min_s}-{max_s} s under {data}")
    return out


def wav(x: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def bad_inputs(clip: bytes, max_duration_s: float, max_upload_mb: float) -> list[tuple[str, bytes, int]]:
    """(kind, body, expected status), from a real clip."""
    from emovox.audio import load_audio

    x = load_audio(clip, sample_rate_hz=SR)
    as_wav = wav(x)
    too_long = wav(np.tile(x, int(np.ceil((max_duration_s + 1) * SR / len(x)))))
    too_large = os.urandom(int(max_upload_mb * 1024 * 1024) + 4096)
    return [("empty", b"", 400), ("truncated", as_wav[: len(as_wav) // 2], 400),
            ("not audio", b"this is not audio at all\n" * 40, 415), ("too long", too_long, 413),
            ("too large", too_large, 413)]


# -- the in-process peer ----------------------------------------------------------------------------

def in_process(model_name: str, clips: list[bytes], *, batch_size: int, threads: list[int], passes: int,
               max_duration_s: float) -> tuple[dict[int, float], list[dict]]:
    """Best clips/s of ``predict_batch`` over ``clips`` (after a warm-up) with each number of torch
    threads, and each clip's answer."""
    import torch

    from emovox.inference import load_model

    model = load_model(model_name, max_duration_s=max_duration_s)
    rates, preds = {}, []
    for n in threads:
        torch.set_num_threads(n)
        model.predict_batch(clips[:4], batch_size=batch_size)  # warm-up: kernels for the first shapes
        for _ in range(passes):
            t0 = time.perf_counter()
            preds = model.predict_batch(clips, batch_size=batch_size)
            rates[n] = max(rates.get(n, 0.0), len(clips) / (time.perf_counter() - t0))
    return rates, [{"emotion": p.label, "all_probabilities": p.scores} for p in preds]


# -- load -----------------------------------------------------------------------------------------

@dataclass
class Level:
    mode: str
    scenario: str
    load: str
    latencies: list[float] = field(default_factory=list)  # correct good answers, seconds
    bad_ok: int = 0
    shed: int = 0  # 503
    other_5xx: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    note: str = ""

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.bad_ok + self.shed + self.other_5xx + len(self.errors)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else float("nan")

    def percentile_ms(self, q: float) -> float:
        return 1000 * float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


BOUNDARY = "emovox-load-boundary"
HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def multipart(body: bytes) -> bytes:
    """A ``multipart/form-data`` body with ``body`` as field ``file``, encoded once (the client stays light)."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="clip"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + body + f"\r\n--{BOUNDARY}--\r\n".encode()


class Checker:
    """Sends one request and files its outcome in a Level."""

    def __init__(self, expected: list[dict], bad: list[tuple[str, bytes, int]], clips: list[bytes]):
        self.expected = expected
        self.bad = [(kind, multipart(body), status) for kind, body, status in bad]
        self.clips = [multipart(c) for c in clips]

    def request(self, i: int, bad_every: int) -> tuple[str, bytes, int, int | None]:
        """The i-th request of a level: (kind, body, expected status, clip index or None)."""
        if bad_every and i % bad_every == bad_every - 1:
            kind, body, status = self.bad[(i // bad_every) % len(self.bad)]
            return kind, body, status, None
        k = i % len(self.clips)
        return "good", self.clips[k], 200, k

    async def send(self, client, level: Level, i: int, bad_every: int = 0) -> None:
        import httpx

        kind, body, status, k = self.request(i, bad_every)
        t0 = time.perf_counter()
        try:
            r = await client.post("/predict-emotion/", content=body, headers=HEADERS)
        except httpx.HTTPError as e:
            if kind == "too large":  # the server may close while a refused body is still being sent
                level.bad_ok += 1
            else:
                level.errors.append(f"{kind}: {type(e).__name__}: {e}")
            return
        self.file(level, kind, status, k, r, time.perf_counter() - t0)

    def file(self, level: Level, kind: str, status: int, k: int | None, r, dt: float) -> None:
        if r.status_code == 503:
            level.shed += 1
        elif r.status_code >= 500:
            level.other_5xx += 1
            level.errors.append(f"{kind}: HTTP {r.status_code}: {r.text[:160]}")
        elif r.status_code != status:
            level.errors.append(f"{kind}: HTTP {r.status_code} (expected {status}): {r.text[:160]}")
        elif k is None:
            body = r.json()
            ok = body.get("status") == "error" and body.get("error")
            level.bad_ok += bool(ok)
            if not ok:
                level.errors.append(f"{kind}: error body without a message: {r.text[:160]}")
        else:
            problem = differs(r.json(), self.expected[k])
            if problem:
                level.errors.append(f"wrong answer under load for clip {k}: {problem}")
            else:
                level.latencies.append(dt)


def differs(got: dict, want: dict, tol: float = 1e-5) -> str | None:
    """Why two answers (``emotion`` and ``all_probabilities``) are not the same, or None."""
    if got.get("emotion") != want["emotion"]:
        return f"{got.get('emotion')} != {want['emotion']}"
    gp, wp = got.get("all_probabilities", {}), want["all_probabilities"]
    if set(gp) != set(wp):
        return f"labels {sorted(gp)} != {sorted(wp)}"
    worst = max(abs(gp[k] - v) for k, v in wp.items())
    return f"probabilities differ by {worst:.2g}" if worst > tol else None


async def closed_loop(url: str, checker: Checker, level: Level, clients: int, n_requests: int,
                      time_limit_s: float, bad_every: int = 0) -> Level:
    import httpx

    counter = iter(range(n_requests))
    deadline = time.perf_counter() + time_limit_s

    async def client_loop(client) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            await checker.send(client, level, i, bad_every)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=KEEPALIVE_S)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        level.wall_s = time.perf_counter() - t0
    return level


async def open_loop(url: str, checker: Checker, level: Level, rate: float, seconds: float) -> Level:
    """Arrivals at ``rate`` per second for ``seconds``, whatever the answers take (overload)."""
    import httpx

    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256, keepalive_expiry=KEEPALIVE_S)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        t0 = time.perf_counter()
        tasks, i = [], 0
        while (now := time.perf_counter() - t0) < seconds:
            while i < rate * now:
                tasks.append(asyncio.create_task(checker.send(client, level, i)))
                i += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        level.wall_s = time.perf_counter() - t0
    level.note = f"{i / seconds:.0f} req/s offered for {seconds:g} s"
    return level


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB of a process and its children (Linux /proc)."""
    pids, rss, peak = [pid], 0.0, 0.0
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        except OSError:
            continue
        rss += int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
        peak += int(fields.get("VmHWM", "0 kB").split()[0]) / 1024
    return rss, peak


# -- one server -------------------------------------------------------------------------------------

async def alone_answers(url: str, clips: list[bytes]) -> list[dict]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
        out = []
        for c in clips:
            r = await client.post("/predict-emotion/", content=multipart(c), headers=HEADERS)
            r.raise_for_status()
            out.append(r.json())
        return out


async def run_mode(args, mode: str, srv, clips: list[bytes], inproc: list[dict], bad) -> list[Level]:
    expected = await alone_answers(srv.url, clips)
    mismatches = [k for k, (e, want) in enumerate(zip(expected, inproc)) if differs(e, want)]
    checker = Checker(expected, bad, clips)
    n = args.clients * args.requests_per_client
    good = await closed_loop(srv.url, checker, Level(mode, "good", f"{args.clients} clients"), args.clients, n,
                             args.time_limit_s)
    good.errors += [f"clip {k}: the server's answer alone differs from in-process" for k in mismatches]
    log_level(good)
    bad_mix = await closed_loop(srv.url, checker, Level(mode, "bad-mix (20 % bad)", f"{args.clients} clients"),
                                args.clients, n, args.time_limit_s, bad_every=5)
    log_level(bad_mix)
    levels = [good, bad_mix]
    if args.overload_s > 0:
        rate = args.overload_factor * good.throughput
        over = await open_loop(srv.url, checker, Level(mode, "overload", f"{args.overload_factor:g}x rate"),
                               rate, args.overload_s)
        rss, peak = memory_mb(srv.process.pid)
        after = await closed_loop(srv.url, checker, Level(mode, "after overload", "4 clients"), 4, 16,
                                  args.time_limit_s)
        over.note += f"; server RSS {rss:.0f} MiB after, peak {peak:.0f} MiB"
        after.note = "recovered" if len(after.latencies) == 16 else f"NOT recovered: {after.requests - after.shed} ok"
        levels += [log_level(over), log_level(after)]
    return levels


def log_level(level: Level) -> Level:
    print(f"  {level.mode:3s} {level.scenario:20s} {level.load:14s}: {level.requests} requests in "
          f"{level.wall_s:.1f} s, {level.throughput:.1f} good/s, 503 {level.shed}, errors {len(level.errors)} "
          f"{level.note}", file=sys.stderr)
    return level


# -- the run ----------------------------------------------------------------------------------------

def server_env(args, model: str, mode: str) -> dict[str, str]:
    env = {"AUDIO_MODEL_DIR": model, "TEXT_MODEL_DIR": "none", "USE_MOCK_MODELS": "false",
           "EMOVOX_MAX_DURATION_S": str(args.max_duration_s), "EMOVOX_MAX_UPLOAD_MB": str(args.max_upload_mb),
           "EMOVOX_TORCH_THREADS": str(args.torch_threads), "EMOVOX_MAX_BATCH": "1" if mode == "off" else str(args.max_batch),
           "EMOVOX_BATCH_WAIT_MS": str(args.batch_wait_ms), "EMOVOX_MAX_QUEUE": str(args.max_queue)}
    if args.max_concurrency:
        env["EMOVOX_MAX_CONCURRENCY"] = str(args.max_concurrency)
    return env


def table(args, info: dict, rates: dict[int, float], levels: list[Level]) -> str:
    inproc_rate = max(rates.values())
    head = (f"Model `{info['name']}` ({info['kind']}, weights {info['version']}); {args.clips} real "
            f"3-4 s clips (RAVDESS FLAC, CREMA-D Opus); uvicorn, {args.workers} worker(s), torch threads "
            f"{args.torch_threads}, EMOVOX_MAX_CONCURRENCY={args.max_concurrency or 'default'}; batching on: "
            f"--max-batch {args.max_batch} --batch-wait-ms {args.batch_wait_ms:g}, off: --max-batch 1; "
            f"--max-queue {args.max_queue}. {os.cpu_count()} CPU cores ({platform.machine()}), Python "
            f"{platform.python_version()}; clients and server on the same machine.\n\n"
            f"In-process peer (`predict_batch` on the same clips, batch {args.max_batch}, best of {args.passes} passes "
            f"and of {', '.join(f'{n} torch thread(s): {r:.1f}' for n, r in rates.items())} clips/s): "
            f"**{inproc_rate:.1f} clips/s**.\n")
    rows = ["| batching | scenario | load | requests | good answered (correct) | bad refused (4xx ok) | 503 | "
            "other 5xx | wrong | good/s | x in-process | p50 ms | p99 ms | notes |", "|" + "---|" * 14]
    for lv in levels:
        rows.append(f"| {lv.mode} | {lv.scenario} | {lv.load} | {lv.requests} | {len(lv.latencies)} | "
                    f"{lv.bad_ok if 'bad' in lv.scenario or lv.bad_ok else '-'} | {lv.shed} | {lv.other_5xx} | "
                    f"{len(lv.errors) - lv.other_5xx} | {lv.throughput:.1f} | {lv.throughput / inproc_rate:.2f} | "
                    f"{lv.percentile_ms(50):.0f} | {lv.percentile_ms(99):.0f} | {lv.note} |")
    return head + "\n" + "\n".join(rows)


def targets(args, inproc_rate: float, levels: list[Level]) -> list[str]:
    out = []
    for lv in levels:
        if lv.scenario == "good":
            ratio, p99 = lv.throughput / inproc_rate, lv.percentile_ms(99)
            limit = TARGET_P99_FACTOR * args.clients / lv.throughput * 1000
            five = sum(x.other_5xx + x.shed for x in levels if x.mode == lv.mode and x.scenario != "overload")
            out.append(f"batching {lv.mode}: throughput {ratio:.2f}x in-process (target >= {TARGET_RATIO}: "
                       f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}); p99 {p99:.0f} ms (target <= {limit:.0f} "
                       f"ms: {'met' if p99 <= limit else 'NOT met'}); 5xx outside overload: {five}")
    return out


def pick_model(args, tmp: str) -> str | None:
    from emovox.inference import available_models

    if args.tiny:
        return str(tiny_model(Path(tmp) / "tiny-cnn"))
    if args.model:
        return args.model
    if any(m["name"] == "default" for m in available_models()):
        return "default"
    return None


def tiny_model(folder: Path) -> Path:
    import torch

    from emovox.data.labels import EKMAN7
    from emovox.features import FeatureStats, preset
    from emovox.modelio import make_config, save_model
    from emovox.models import build_model

    torch.manual_seed(0)
    cfg = preset("logmel64")
    m = build_model("cnn", n_features=cfg.n_features, n_classes=len(EKMAN7))
    save_model(folder, m.eval(), make_config(model_name="cnn", model_kwargs=m.kwargs, features=cfg,
                                             labels=list(EKMAN7), stats=FeatureStats([-40.0] * 64, [20.0] * 64)))
    return folder


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder or shipped name (default: the shipped default)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random CNN instead (to test the harness)")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared corpora (ravdess/, crema-d/)")
    ap.add_argument("--clips", type=int, default=24, help="distinct real clips cycled through")
    ap.add_argument("--modes", default="off,on", help="batching modes to run: off (--max-batch 1), on")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (closed loop)")
    ap.add_argument("--requests-per-client", type=int, default=3, help="requests per client per level")
    ap.add_argument("--time-limit-s", type=float, default=60.0, help="time limit per level")
    ap.add_argument("--overload-factor", type=float, default=4.0, help="open-loop rate / the good level's rate")
    ap.add_argument("--overload-s", type=float, default=10.0, help="overload duration (0: skip)")
    ap.add_argument("--passes", type=int, default=2, help="in-process passes (best is reported)")
    ap.add_argument("--inproc-threads", default=f"1,{os.cpu_count() or 1}",
                    help="in-process torch threads to try (the best is the peer)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--max-batch", type=int, default=16, help="EMOVOX_MAX_BATCH with batching on")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0, help="EMOVOX_BATCH_WAIT_MS")
    ap.add_argument("--max-queue", type=int, default=64, help="EMOVOX_MAX_QUEUE")
    ap.add_argument("--max-concurrency", type=int, default=None, help="EMOVOX_MAX_CONCURRENCY (default: the server's)")
    ap.add_argument("--torch-threads", type=int, default=1, help="EMOVOX_TORCH_THREADS of the server")
    ap.add_argument("--max-duration-s", type=float, default=30.0, help="EMOVOX_MAX_DURATION_S of the server")
    ap.add_argument("--max-upload-mb", type=float, default=2.0, help="EMOVOX_MAX_UPLOAD_MB of the server")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    from emovox.server.process import server_process

    tmp = tempfile.TemporaryDirectory(prefix="emovox-load-")
    model = pick_model(args, tmp.name)
    if model is None:
        print("server_load: no shipped default model in this install: pass --model PATH (or --tiny)", file=sys.stderr)
        return 2
    named = real_clips(args.data, args.clips)
    clips = [body for _, body in named]
    bad = bad_inputs(clips[0], args.max_duration_s, args.max_upload_mb)
    t0 = time.perf_counter()
    threads = sorted({int(n) for n in args.inproc_threads.split(",")})
    rates, inproc = in_process(model, clips, batch_size=args.max_batch, threads=threads, passes=args.passes,
                               max_duration_s=args.max_duration_s)
    inproc_rate = max(rates.values())
    print(f"in-process: {rates} clips/s ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    levels: list[Level] = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        with server_process(server_env(args, model, mode), workers=args.workers, timeout_s=300) as srv:
            import httpx

            info = httpx.get(srv.url + "/").json()["models"]["audio"]
            levels += asyncio.run(run_mode(args, mode, srv, clips, inproc, bad))
    print("\n### HTTP service load: `POST /predict-emotion/`, 3-4 s real clips\n")
    print(table(args, info, rates, levels))
    print("\n" + "\n".join(f"- {t}" for t in targets(args, inproc_rate, levels)))
    errors = [e for lv in levels for e in lv.errors]
    for e in errors[:10]:
        print("  " + e, file=sys.stderr)
    tmp.cleanup()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

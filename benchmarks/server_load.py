"""Load test of the HTTP service: a real ``uvicorn`` on 127.0.0.1, driven by httpx.AsyncClient.

For 1, 8 and 32 concurrent clients posting 3 s clips to ``/predict-emotion/``: requests per
second, p50/p99 latency, and errors (any non-200, or an answer that differs from the one the
same clip got alone before the load: the service must stay correct under load). Then the same
with a bad-input mix (a quarter of requests are non-audio, truncated, empty, too long or too
large): every bad request must get its own status (415/400/400/413/413) and every good one the
right answer. Each level is bounded by a request count and a time limit; the script stops by
itself and prints a Markdown table. Exit status 1 when any error was seen.

    python benchmarks/server_load.py                    # the shipped default model
    python benchmarks/server_load.py --model runs/r1    # a model folder (or a shipped name)
    python benchmarks/server_load.py --tiny             # a tiny random CNN (tests the harness)

The machine is shared: absolute figures move between runs; the table records the setting.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SR = 16000


# -- clips ----------------------------------------------------------------------------------------

def voice(seconds: float, f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f = f0 * (1 + 0.3 * np.sin(2 * np.pi * 0.25 * t + seed)) * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * x / np.abs(x).max() + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def wav(x: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def good_clips(n: int, seconds: float) -> list[bytes]:
    return [wav(voice(seconds, 100 + 25 * i, i)) for i in range(n)]


def bad_inputs(max_duration_s: float, max_upload_mb: float) -> list[tuple[str, bytes, int]]:
    """(kind, body, expected status)."""
    clip = wav(voice(3.0, 180, 99))
    too_long = wav(voice(max_duration_s + 1.0, 150, 98))
    too_large = os.urandom(int(max_upload_mb * 1024 * 1024) + 4096)
    return [("not audio", b"this is not audio at all\n" * 40, 415), ("truncated", clip[: len(clip) // 2], 400),
            ("empty", b"", 400), ("too long", too_long, 413), ("too large", too_large, 413)]


# -- load -----------------------------------------------------------------------------------------

@dataclass
class Level:
    scenario: str
    clients: int
    latencies: list[float] = field(default_factory=list)  # good requests only, seconds
    errors: list[str] = field(default_factory=list)
    bad_ok: int = 0
    wall_s: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.bad_ok + len(self.errors)

    def row(self) -> str:
        lat = sorted(self.latencies)
        p50 = 1000 * statistics.median(lat) if lat else float("nan")
        p99 = 1000 * float(np.percentile(lat, 99)) if lat else float("nan")
        rps = self.requests / self.wall_s if self.wall_s else float("nan")
        good_rps = len(lat) / self.wall_s if self.wall_s else float("nan")
        bad = f"{self.bad_ok}" if self.scenario != "good" else "–"
        return (f"| {self.scenario} | {self.clients} | {self.requests} | {len(lat)} | {bad} | {len(self.errors)} | "
                f"{rps:.1f} | {good_rps:.1f} | {p50:.0f} | {p99:.0f} |")


async def run_level(url: str, scenario: str, clients: int, clips: list[bytes], expected: list[dict],
                    bad: list[tuple[str, bytes, int]], n_requests: int, time_limit_s: float) -> Level:
    import httpx

    level = Level(scenario, clients)
    counter = iter(range(n_requests))
    deadline = time.perf_counter() + time_limit_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            is_bad = scenario == "bad-mix" and i % 4 == 3
            if is_bad:
                kind, body, status = bad[(i // 4) % len(bad)]
            else:
                kind, body, status = "good", clips[i % len(clips)], 200
            t0 = time.perf_counter()
            try:
                r = await client.post("/predict-emotion/", files={"file": ("clip.wav", body, "audio/wav")})
            except httpx.HTTPError as e:
                if is_bad and kind == "too large":  # the server may close while a refused body is still sent
                    level.bad_ok += 1
                    continue
                level.errors.append(f"{kind}: {type(e).__name__}: {e}")
                continue
            dt = time.perf_counter() - t0
            if r.status_code != status:
                level.errors.append(f"{kind}: HTTP {r.status_code} (expected {status}): {r.text[:160]}")
                continue
            if is_bad:
                body_json = r.json()
                if body_json.get("status") != "error" or not body_json.get("error"):
                    level.errors.append(f"{kind}: error body without a message: {r.text[:160]}")
                else:
                    level.bad_ok += 1
                continue
            got, want = r.json(), expected[i % len(clips)]
            if got["emotion"] != want["emotion"] or abs(got["confidence"] - want["confidence"]) > 1e-5:
                level.errors.append(f"wrong answer under load: {got['emotion']} {got['confidence']} "
                                    f"!= {want['emotion']} {want['confidence']}")
                continue
            level.latencies.append(dt)

    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        level.wall_s = time.perf_counter() - t0
    return level


async def main_async(args, url: str, model_info: dict) -> list[Level]:
    import httpx

    clips = good_clips(args.distinct_clips, args.clip_s)
    bad = bad_inputs(args.max_duration_s, args.max_upload_mb)
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:  # answers for each clip, alone
        expected = []
        for c in clips:
            r = await client.post("/predict-emotion/", files={"file": ("clip.wav", c, "audio/wav")})
            r.raise_for_status()
            expected.append(r.json())
    levels = []
    for scenario in ("good", "bad-mix"):
        for c in args.clients:
            n = max(args.requests, 4 * c)
            level = await run_level(url, scenario, c, clips, expected, bad, n, args.time_limit_s)
            print(f"  {scenario:8s} clients={c:3d}: {level.requests} requests in {level.wall_s:.1f} s, "
                  f"{len(level.errors)} errors", file=sys.stderr)
            levels.append(level)
    return levels


def tiny_model(folder: Path) -> Path:
    import torch

    from emovox.features import FeatureStats, preset
    from emovox.labels import EKMAN7
    from emovox.modelio import make_config, save_model
    from emovox.models import build_model

    torch.manual_seed(0)
    cfg = preset("logmel64")
    m = build_model("cnn", n_features=cfg.n_features, n_classes=len(EKMAN7))
    save_model(folder, m.eval(), make_config(model_name="cnn", model_kwargs=m.kwargs, features=cfg,
                                             labels=list(EKMAN7), stats=FeatureStats([-40.0] * 64, [20.0] * 64)))
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder or shipped name (default: the shipped default)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random CNN instead (to test the harness)")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels")
    ap.add_argument("--requests", type=int, default=200, help="requests per level (at least 4 per client)")
    ap.add_argument("--time-limit-s", type=float, default=60.0, help="time limit per level")
    ap.add_argument("--clip-s", type=float, default=3.0, help="clip duration")
    ap.add_argument("--distinct-clips", type=int, default=16, help="different clips cycled through")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--max-concurrency", type=int, default=None, help="EMOVOX_MAX_CONCURRENCY of the server")
    ap.add_argument("--torch-threads", type=int, default=1, help="EMOVOX_TORCH_THREADS of the server")
    ap.add_argument("--max-duration-s", type=float, default=30.0, help="EMOVOX_MAX_DURATION_S of the server")
    ap.add_argument("--max-upload-mb", type=float, default=2.0, help="EMOVOX_MAX_UPLOAD_MB of the server")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]

    from emovox.inference import available_models
    from emovox.server.process import server_process

    tmp = tempfile.TemporaryDirectory(prefix="emovox-load-")
    if args.tiny:
        model = str(tiny_model(Path(tmp.name) / "tiny-cnn"))
    elif args.model:
        model = args.model
    elif any(m["name"] == "default" for m in available_models()):
        model = "default"
    else:
        print("server_load: no shipped default model in this install: pass --model PATH (or --tiny to test the "
              "harness)", file=sys.stderr)
        return 2
    env = {"AUDIO_MODEL_DIR": model, "TEXT_MODEL_DIR": "none", "EMOVOX_MAX_DURATION_S": str(args.max_duration_s),
           "EMOVOX_MAX_UPLOAD_MB": str(args.max_upload_mb), "USE_MOCK_MODELS": "false",
           "EMOVOX_TORCH_THREADS": str(args.torch_threads)}
    if args.max_concurrency:
        env["EMOVOX_MAX_CONCURRENCY"] = str(args.max_concurrency)
    t0 = time.time()
    with server_process(env, workers=args.workers, timeout_s=180) as srv:
        import httpx

        health = httpx.get(srv.url + "/").json()
        info = health["models"]["audio"]
        print(f"server up in {time.time() - t0:.1f} s at {srv.url}: model {info['name']} ({info['kind']}, "
              f"{info['version']})", file=sys.stderr)
        levels = asyncio.run(main_async(args, srv.url, info))

    print(f"\n### HTTP service load: `POST /predict-emotion/`, {args.clip_s:g} s WAV clips\n")
    print(f"Model `{info['name']}` ({info['kind']}, weights {info['version']}); uvicorn, {args.workers} worker(s), "
          f"EMOVOX_MAX_CONCURRENCY={args.max_concurrency or 'default'}, EMOVOX_TORCH_THREADS={args.torch_threads}; "
          f"{os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}), Python {platform.python_version()}; client and server "
          f"on the same machine. Bad-mix: every 4th request is non-audio (415), truncated (400), empty (400), "
          f"too long (413) or too large (413); those must get their status, the good ones their right answer.\n")
    print("| scenario | clients | requests | good answered | bad refused correctly | errors | req/s (all) | "
          "req/s (good) | p50 ms (good) | p99 ms (good) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for level in levels:
        print(level.row())
    errors = [e for lv in levels for e in lv.errors]
    if errors:
        print(f"\n{len(errors)} errors, first ones:", file=sys.stderr)
        for e in errors[:10]:
            print("  " + e, file=sys.stderr)
    tmp.cleanup()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

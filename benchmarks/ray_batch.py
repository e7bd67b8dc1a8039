"""Batch classification: local ``emovox classify`` against ``--engine ray`` with 1 and 2 actors.

The same real clips (half RAVDESS FLAC, half CREMA-D Opus, from ../shared/data) go through:

1. ``local``: what ``emovox classify CLIPS --output local.jsonl`` does, in this process (its
   decoding threads, one model);
2. ``ray, N actor(s)``: what ``emovox classify --engine ray --ray-actors N --output ray.parquet``
   does, on one local Ray started once for the run (``--ray-num-cpus``; its start-up is reported
   apart). Each run includes starting its actors and loading their models.

Reported for each: the wall time, clips/s, and the CPU each clip cost (``process_time`` around the
model work: in this process for ``local``, inside each actor for Ray, every batch logged), plus
each actor's start-up CPU (imports, model load) and how the clips were shared between actors. On
a machine shared with other jobs the wall times move with their load; the CPU per clip does not,
and it is what the projection to more cores and nodes rests on (clips/s per core = 1 / CPU per
clip). Every Ray record is checked against the local one (same paths, errors, emotions; scores
within 1e-6). The model runs one thread per process.

    python -m benchmarks.ray_batch --model crnn --clips 240
    python -m benchmarks.ray_batch --model default --clips 60
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.common import DEFAULT_DATA
from emovox.scale.ray_batch import ClipClassifier

DATA = DEFAULT_DATA


class TimedClipClassifier(ClipClassifier):
    """The batch actor, logging ``pid start-up-cpu-s`` once and ``pid clips wall-s cpu-s`` per batch."""

    log_path = ""

    def __init__(self, spec):
        super().__init__(spec)
        self._log(f"start {os.getpid()} {time.process_time():.4f}")

    def __call__(self, batch):
        w0, c0 = time.perf_counter(), time.process_time()
        out = super().__call__(batch)
        self._log(f"batch {os.getpid()} {len(batch['path'])} {time.perf_counter() - w0:.4f} "
                  f"{time.process_time() - c0:.4f}")
        return out

    def _log(self, line: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(line + "\n")


def pick_clips(data: Path, n: int) -> list[str]:
    """``n`` clips, half RAVDESS, half CREMA-D, spread over speakers (every k-th file)."""
    ravdess = sorted((data / "ravdess").glob("Actor_*/*.flac"))
    crema = sorted((data / "crema-d").glob("*.opus"))
    half = n // 2
    return ([str(p) for p in ravdess[:: max(1, len(ravdess) // half)][:half]]
            + [str(p) for p in crema[:: max(1, len(crema) // (n - half))][: n - half]])


def run_local(model_name: str, clips: list[str], batch_size: int, out: Path) -> dict:
    from emovox.commands.records import RecordWriter, build_record
    from emovox.inference import load_model

    t0, c0 = time.perf_counter(), time.process_time()
    model = load_model(model_name, threads=1)
    c1 = time.process_time()
    results = model.predict_batch(clips, batch_size=batch_size, errors="return")
    c2 = time.process_time()
    with RecordWriter(out) as w:
        w.write(build_record(c, r) for c, r in zip(clips, results))
    return {"wall": time.perf_counter() - t0, "cpu_per_clip": (c2 - c1) / len(clips), "startup_cpu": [c1 - c0],
            "shares": [len(clips)]}


def run_ray(model_name: str, clips: list[str], batch_size: int, actors: int, out: Path, log: Path) -> dict:
    from emovox.commands.records import RecordWriter
    from emovox.scale.options import BatchOptions
    from emovox.scale.ray_batch import ModelSpec, classify_with_ray

    TimedClipClassifier.log_path = str(log)
    t0 = time.perf_counter()
    with RecordWriter(out) as w:
        w.write(classify_with_ray(clips, ModelSpec(model_name, batch_size=batch_size, threads=1), BatchOptions(actors),
                                  actor=TimedClipClassifier))
    wall = time.perf_counter() - t0
    startup, shares, cpu = [], defaultdict(int), 0.0
    for line in log.read_text().splitlines():
        kind, pid, *vals = line.split()
        if kind == "start":
            startup.append(float(vals[0]))
        else:
            shares[pid] += int(vals[0])
            cpu += float(vals[2])
    return {"wall": wall, "cpu_per_clip": cpu / len(clips), "startup_cpu": startup, "shares": sorted(shares.values())}


def differences(got: list[dict], want: list[dict]) -> int:
    bad = 0
    for g, w in zip(got, want):
        if g["path"] != w["path"] or g.get("error") != w.get("error") or g.get("emotion") != w.get("emotion"):
            bad += 1
        elif "scores" in w and max(abs(g["scores"][k] - v) for k, v in w["scores"].items()) > 1.01e-6:
            bad += 1
    return bad + abs(len(got) - len(want))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="crnn")
    ap.add_argument("--clips", type=int, default=240)
    ap.add_argument("--actors", default="1,2", help="actor counts to run")
    ap.add_argument("--ray-num-cpus", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one model thread per process, actors and local alike
    from emovox.commands.records import read_records
    from emovox.scale.options import RayOptions
    from emovox.scale.ray_support import ray_session

    clips = pick_clips(args.data, args.clips)
    tmp = Path(tempfile.mkdtemp(prefix="emovox-raybench-"))
    load0 = os.getloadavg()[0]
    rows = [("local (this process)", run_local(args.model, clips, args.batch_size, tmp / "local.jsonl"))]
    want = read_records(tmp / "local.jsonl")
    rows[0][1]["bad"] = 0
    t0 = time.perf_counter()
    with ray_session(RayOptions(num_cpus=args.ray_num_cpus), part="data"):
        ray_start = time.perf_counter() - t0
        for n in [int(a) for a in args.actors.split(",")]:
            out = tmp / f"ray{n}.parquet"
            r = run_ray(args.model, clips, args.batch_size, n, out, tmp / f"ray{n}.log")
            r["bad"] = differences(read_records(out), want)
            rows.append((f"ray, {n} actor(s)", r))
    print(f"\n{len(clips)} clips, model `{args.model}`, batch {args.batch_size}; {os.cpu_count()} cores "
          f"({platform.machine()}), one model thread per process; local Ray of {args.ray_num_cpus} CPUs started in "
          f"{ray_start:.1f} s (not below); load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| engine | wall s (with start-up) | clips/s | CPU ms per clip | clips/s per core (1 / CPU) | "
          "start-up CPU s per process | clips per actor | records differing from local |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['wall']:.1f} | {len(clips) / r['wall']:.1f} | {1000 * r['cpu_per_clip']:.1f} | "
              f"{1 / r['cpu_per_clip']:.1f} | {', '.join(f'{s:.1f}' for s in r['startup_cpu'])} | "
              f"{' + '.join(map(str, r['shares']))} | {r['bad']} |")
    return 1 if any(r["bad"] for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

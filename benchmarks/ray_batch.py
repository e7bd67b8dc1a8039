"""Batch classification throughput: local ``emovox classify`` against ``--engine ray`` with 1 and 2 actors.

The same real clips (half RAVDESS FLAC, half CREMA-D Opus, from ../shared/data) go through:

1. ``local``: ``emovox classify CLIPS --output local.jsonl`` in this process (its decoding threads, one
   model);
2. ``ray, N actor(s)``: ``emovox classify --engine ray --ray-actors N --output ray.parquet`` on one
   local Ray started once for the run (``--ray-num-cpus``; its start-up is reported apart). Each run
   includes starting its actors and loading their models, as every ``classify --engine ray`` does.

Each runs ``--clips`` clips and twice as many: the difference of the two wall times is what the
extra clips cost once everything is up (the marginal rate, what more nodes multiply); the wall
time of the small run shows the fixed cost (actors starting, models loading).

Every Ray run's records are checked against the local ones (same paths, errors, emotions; scores
within 1e-6). Torch runs one intra-op thread per process (actors and local alike), so N actors use
N cores and the local run uses its decoding threads and one model thread.

    python benchmarks/ray_batch.py --model crnn --clips 240      # 240 and 480 clips
    python benchmarks/ray_batch.py --model default --clips 60 --actors 1,2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pick_clips(data: Path, n: int) -> list[str]:
    """``n`` clips, half RAVDESS, half CREMA-D, spread over speakers (every k-th file)."""
    ravdess = sorted((data / "ravdess").glob("Actor_*/*.flac"))
    crema = sorted((data / "crema-d").glob("*.opus"))
    half = n // 2
    return ([str(p) for p in ravdess[:: max(1, len(ravdess) // half)][:half]]
            + [str(p) for p in crema[:: max(1, len(crema) // (n - half))][: n - half]])


def run_local(model_name: str, clips: list[str], batch_size: int, out: Path) -> tuple[float, float]:
    """What local ``emovox classify --output`` does -> (seconds to load the model, seconds to classify)."""
    from emovox.inference import load_model
    from emovox.records import RecordWriter, build_record

    t0 = time.perf_counter()
    model = load_model(model_name)
    t1 = time.perf_counter()
    results = model.predict_batch(clips, batch_size=batch_size, errors="return")
    with RecordWriter(out) as w:
        w.write(build_record(c, r) for c, r in zip(clips, results))
    return t1 - t0, time.perf_counter() - t1


def run_ray(model_name: str, clips: list[str], batch_size: int, actors: int, out: Path) -> tuple[float, float]:
    """What ``emovox classify --engine ray --output`` does -> (seconds to the first record: actors
    starting, models loading, the first batch; seconds from there to the last record)."""
    from emovox.records import RecordWriter
    from emovox.scale.options import BatchOptions
    from emovox.scale.ray_batch import ModelSpec, classify_with_ray

    t0 = time.perf_counter()
    first = None
    with RecordWriter(out) as w:
        for rec in classify_with_ray(clips, ModelSpec(model_name, batch_size=batch_size), BatchOptions(actors)):
            first = first or time.perf_counter()
            w.write([rec])
    return first - t0, time.perf_counter() - first


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
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one intra-op thread everywhere
    import torch

    torch.set_num_threads(1)
    from emovox.records import read_records
    from emovox.scale.options import RayOptions
    from emovox.scale.ray_support import ray_session

    both = pick_clips(args.data, 2 * args.clips)
    sets = {args.clips: both[::2], 2 * args.clips: both}  # N clips, and 2N (RAVDESS and CREMA-D in each)
    tmp = Path(tempfile.mkdtemp(prefix="emovox-raybench-"))
    load0 = os.getloadavg()[0]
    rows: list[tuple[str, dict[int, float], int]] = []
    walls: dict[int, float] = {}
    for n, clips in sets.items():
        load_s, run_s = run_local(args.model, clips, args.batch_size, tmp / f"local{n}.jsonl")
        walls[n] = load_s + run_s
    rows.append(("local (this process)", walls, 0))
    t0 = time.perf_counter()
    with ray_session(RayOptions(num_cpus=args.ray_num_cpus), part="data"):
        ray_start = time.perf_counter() - t0
        for actors in [int(a) for a in args.actors.split(",")]:
            walls, bad = {}, 0
            for n, clips in sets.items():
                out = tmp / f"ray{actors}_{n}.parquet"
                walls[n] = sum(run_ray(args.model, clips, args.batch_size, actors, out))
                bad += differences(read_records(out), read_records(tmp / f"local{n}.jsonl"))
            rows.append((f"ray, {actors} actor(s)", walls, bad))
    n = args.clips
    print(f"\nmodel `{args.model}`, batch {args.batch_size}; {os.cpu_count()} cores ({platform.machine()}), one "
          f"torch thread per process; local Ray of {args.ray_num_cpus} CPUs started in {ray_start:.1f} s (not "
          f"below); load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print(f"| engine | wall s, {n} clips | wall s, {2 * n} clips | clips/s overall ({2 * n}) | clips/s marginal "
          f"({n} / difference) | records differing from local |\n|---|---|---|---|---|---|")
    for name, walls, bad in rows:
        marginal = n / max(walls[2 * n] - walls[n], 1e-9)
        print(f"| {name} | {walls[n]:.1f} | {walls[2 * n]:.1f} | {2 * n / walls[2 * n]:.1f} | {marginal:.1f} | {bad} |")
    return 1 if any(bad for _, _, bad in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Kill ``emovox train`` with SIGKILL at random moments and resume it, many times.

Each trial trains a small CNN on a synthetic corpus with ``--resume``, killed at a uniformly random
moment of its run (while loading, during an epoch, while writing a checkpoint or the artifacts),
restarted until it finishes on its own. After every kill each file in the output folder must be whole
(JSON parses, checkpoints load); at the end the weights must equal an uninterrupted run's.

    python -m benchmarks.faults --trials 10
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def check_whole(out: Path) -> None:
    import torch

    for f in out.iterdir():
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix in (".pt", ".pth"):
            torch.load(f, weights_only=True)


def max_weight_diff(a: Path, b: Path) -> float:
    from emovox.modelio import load_model_dir

    sa, sb = load_model_dir(a).pipeline.state_dict(), load_model_dir(b).pipeline.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from emovox.data.synth import make_synthetic_corpus

    work = Path(tempfile.mkdtemp(prefix="emovox-faults-"))
    corpus = make_synthetic_corpus(work / "corpus")
    base = [sys.executable, "-m", "emovox.cli", "train", "--data_dir", str(corpus), "--model", "cnn", "--epochs",
            str(args.epochs), "--batch_size", "8", "--early_stopping_patience", "0", "--seed", "5", "--no-progress",
            "--threads", "1", "--cache-dir", str(work / "cache")]
    t = time.perf_counter()
    subprocess.run(base + ["--output_dir", str(work / "straight")], check=True, capture_output=True)
    run_s = time.perf_counter() - t
    rng = random.Random(args.seed)
    kills, diffs, broken = 0, [], 0
    for trial in range(args.trials):
        out = work / f"trial_{trial}"
        while True:
            child = subprocess.Popen(base + ["--output_dir", str(out), "--resume"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            try:
                child.wait(timeout=rng.uniform(0.2, run_s))
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
                child.wait()
                kills += 1
                try:
                    check_whole(out)
                except Exception as e:  # noqa: BLE001 - what the benchmark counts
                    broken += 1
                    print(f"trial {trial}: half-written file after a kill: {e}", flush=True)
                continue
            if child.returncode != 0:
                raise SystemExit(f"trial {trial}: the resumed run failed (exit {child.returncode})")
            break
        leftovers = list(out.glob(".*.tmp"))
        diffs.append(max_weight_diff(work / "straight", out))
        print(f"trial {trial}: done; max |weight difference| {diffs[-1]:.2e}; temporary files left {len(leftovers)}",
              flush=True)
    print(f"\n| trials | kills | half-written files | max weight difference vs uninterrupted |\n|---|---|---|---|\n"
          f"| {args.trials} | {kills} | {broken} | {max(diffs):.1e} |")
    print(f"\nCommand: `python -m benchmarks.faults {' '.join(sys.argv[1:])}` (uninterrupted run: {run_s:.1f} s)")
    return 1 if broken or max(diffs) > 1e-5 else 0


if __name__ == "__main__":
    sys.exit(main())

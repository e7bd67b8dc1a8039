"""Inference speed of `emovox classify`, with peers measured in the same run.

Measures, on a folder of 3–4 s clips (default: RAVDESS actors 1 and 2, 120 FLAC clips):

- emovox throughput (clips/s): decode + resample + features + model, in-process ``predict_batch``
  and through the ``emovox classify FOLDER`` command;
- emovox single-clip latency in-process (median of repeated ``predict`` on one file);
- the whole-process time of ``emovox classify one.wav`` (median of 3 runs, import + model load);
- peer 1: the classic openSMILE eGeMAPSv02 functionals + RBF SVM pipeline (extraction + prediction);
- peer 2: seed 003's per-frame librosa MFCC loop (its dataset ``__getitem__``), features only.

Targets (issue 4, for the CRNN): ≥ 200 clips/s, ≥ 10× the eGeMAPS pipeline, < 2 s for the one-clip command;
the Whisper default (issue 13): a few tenths of a second of model time per clip. ``--compare crnn`` times
other shipped models in the same run.
Ratios are what count: the machine is shared, so absolute figures move between runs.

    python -m benchmarks.speed_benchmark [--model M] [--clips-dir DIR] [--max-clips N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA


def default_clips() -> list[Path]:
    root = DEFAULT_DATA / "ravdess"
    return sorted((root / "Actor_01").glob("*.flac")) + sorted((root / "Actor_02").glob("*.flac"))


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def bench_emovox(model_name, files, repeats=3):
    import emovox

    model = emovox.load_model(model_name)
    model.predict_batch(files[:8])  # warm-up
    first = timed(model.predict_batch, files)[1]  # oneDNN still builds kernels for new batch shapes here
    best = min([first] + [timed(model.predict_batch, files)[1] for _ in range(repeats - 1)])
    lat = []
    for _ in range(15):
        lat.append(timed(model.predict, files[0])[1])
    return {"clips_per_s": len(files) / best, "clips_per_s_first_pass": len(files) / first,
            "latency_ms_median": 1000 * statistics.median(lat),
            "latency_ms_p90": 1000 * float(np.percentile(lat, 90))}


def bench_cli_folder(model_args, folder, n):
    cmd = [sys.executable, "-m", "emovox.cli", "classify", str(folder), "--format", "jsonl", "--no-progress", *model_args]
    _, dt = timed(subprocess.run, cmd, capture_output=True, check=True)
    return {"clips_per_s_including_startup": n / dt, "seconds": dt}


def bench_cli_one(model_args, one):
    cmd = [sys.executable, "-m", "emovox.cli", "classify", str(one), *model_args]
    times = [timed(subprocess.run, cmd, capture_output=True, check=True)[1] for _ in range(3)]
    return {"seconds_median": statistics.median(times), "seconds_all": times}


def bench_egemaps(files, train_files):
    import opensmile
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    xtr = np.vstack([smile.process_file(str(f)).to_numpy() for f in train_files])
    ytr = np.arange(len(train_files)) % 4  # labels are irrelevant to speed; the SVM just needs classes
    clf = make_pipeline(StandardScaler(), SVC(kernel="rbf", probability=True)).fit(xtr, ytr)

    def run():
        feats = np.vstack([smile.process_file(str(f)).to_numpy() for f in files])
        return clf.predict_proba(feats)

    _, dt = timed(run)
    return {"clips_per_s": len(files) / dt}


def bench_seed003_loop(files):
    """Seed 003's dataset code: librosa.load, framing, a librosa MFCC call per 25 ms frame."""
    import warnings

    import librosa

    def features(path):
        audio, sr = librosa.load(path, sr=16000)
        audio = audio / (np.max(np.abs(audio)) + 1e-9)
        frames = librosa.util.frame(audio, frame_length=400, hop_length=160)
        out = []
        for i in range(frames.shape[1]):
            frame = frames[:, i]
            if np.all(frame == 0):
                continue
            out.append(np.mean(librosa.feature.mfcc(y=frame, sr=16000, n_mfcc=13), axis=1))
        return np.array(out)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features(files[0])
        _, dt = timed(lambda: [features(f) for f in files])
    return {"clips_per_s": len(files) / dt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="shipped model name or folder (default: the shipped default)")
    ap.add_argument("--compare", default="", help="comma-separated shipped models also timed in-process (e.g. crnn)")
    ap.add_argument("--clips-dir", type=Path, default=None)
    ap.add_argument("--max-clips", type=int, default=120)
    ap.add_argument("--peer-clips", type=int, default=40, help="clips timed for the (slow) peers")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    files = sorted(args.clips_dir.rglob("*.flac")) + sorted(args.clips_dir.rglob("*.wav")) if args.clips_dir \
        else default_clips()
    files = files[: args.max_clips]
    if not files:
        raise SystemExit("no clips found (need ../shared/data/ravdess or --clips-dir)")
    import soundfile as sf

    durs = [sf.info(str(f)).duration for f in files]
    model_args = ["--model", args.model] if args.model else []
    folder = Path(tempfile.mkdtemp(prefix="emovox_speed_clips_"))  # exactly these clips, nothing left over
    for f in files:
        (folder / f.name).symlink_to(f.resolve())

    res = {"machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "clips": len(files),
           "clip_seconds_mean": float(np.mean(durs)), "command": " ".join([sys.executable, *sys.argv])}
    res["emovox_in_process"] = bench_emovox(args.model, files)
    res["emovox_cli_folder"] = bench_cli_folder(model_args, folder, len(files))
    res["emovox_cli_one_clip"] = bench_cli_one(model_args, files[0])
    res["compare_in_process"] = {name: bench_emovox(name, files) for name in filter(None, args.compare.split(","))}
    peer_files = files[: args.peer_clips]
    res["peer_egemaps_svm"] = bench_egemaps(peer_files, files[-20:])
    res["peer_seed003_librosa_loop"] = bench_seed003_loop(peer_files[:10])
    e = res["emovox_in_process"]["clips_per_s"]
    first = res["emovox_in_process"]["clips_per_s_first_pass"]
    res["ratios"] = {"vs_egemaps": e / res["peer_egemaps_svm"]["clips_per_s"],
                     "first_pass_vs_egemaps": first / res["peer_egemaps_svm"]["clips_per_s"],
                     "vs_seed003_loop": e / res["peer_seed003_librosa_loop"]["clips_per_s"]}
    shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(res, indent=1))
    print()
    print("| pipeline | clips/s | notes |\n|---|---|---|")
    print(f"| emovox, in-process `predict_batch` | {e:.0f} | decode + resample + features + model, best of 3 passes "
          f"(first pass in the process: {res['emovox_in_process']['clips_per_s_first_pass']:.0f}) |")
    c = res["emovox_cli_folder"]
    print(f"| emovox, `emovox classify FOLDER` | {c['clips_per_s_including_startup']:.0f} | "
          f"whole process, {c['seconds']:.1f} s for {len(files)} clips |")
    print(f"| openSMILE eGeMAPSv02 + RBF SVM (peer) | {res['peer_egemaps_svm']['clips_per_s']:.1f} | "
          f"emovox is {res['ratios']['vs_egemaps']:.0f}× faster |")
    print(f"| seed 003 per-frame librosa MFCC loop (peer, features only) | "
          f"{res['peer_seed003_librosa_loop']['clips_per_s']:.2f} | emovox is {res['ratios']['vs_seed003_loop']:.0f}× faster |")
    for name, r in res["compare_in_process"].items():
        print(f"| emovox `{name}` model, in-process `predict_batch` | {r['clips_per_s']:.0f} | first pass "
              f"{r['clips_per_s_first_pass']:.0f}; single clip median {r['latency_ms_median']:.1f} ms |")
    print(f"\nsingle clip in-process: median {res['emovox_in_process']['latency_ms_median']:.1f} ms; "
          f"`emovox classify one.wav` whole process: median {res['emovox_cli_one_clip']['seconds_median']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

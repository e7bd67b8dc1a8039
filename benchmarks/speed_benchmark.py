"""Inference speed of `emovox classify`, with peers measured in the same run.

Measures, on a folder of 3–4 s clips (default: RAVDESS actors 1 and 2, 120 FLAC clips):

- emovox throughput (clips/s): decode + resample + features + model, in-process ``predict_batch``
  and through the ``emovox classify FOLDER`` command;
- emovox single-clip latency in-process (median of repeated ``predict`` on one file);
- the whole-process time of ``emovox classify one.wav`` (median of 3 runs, import + model load);
- peer 1: the classic openSMILE eGeMAPSv02 functionals + RBF SVM pipeline (extraction + prediction);
- peer 2: seed 003's per-frame librosa MFCC loop (its dataset ``__getitem__``), features only.

``--fast MODEL`` (issue 15, the distilled ``fast`` model) adds, on ``--fast-clips`` (240) RAVDESS clips written as
48 kHz 16-bit WAV (the corpus copy here is 16 kHz FLAC: each clip is upsampled once with soxr, so decoding and
resampling cost what 48 kHz recordings cost): in-process throughput with ONNX Runtime (the waveform-in export) and
with PyTorch, ``--fast-threads`` threads, decode + resampling included, and decode + resampling alone; then
``emovox classify --model MODEL FOLDER`` against openSMILE eGeMAPSv02 functionals extracted by 2 processes on the
same files, both whole processes (start-up included). Targets: 500 clips/s in process (aim 1000), 15x eGeMAPS.

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


def write_48k_copies(files, folder: Path) -> list[Path]:
    """Each clip upsampled to 48 kHz with soxr and written as 16-bit WAV in ``folder``."""
    import soundfile as sf
    import soxr

    out = []
    for f in files:
        x, sr = sf.read(str(f), dtype="float32")
        dest = folder / (Path(f).stem + ".wav")
        sf.write(str(dest), soxr.resample(x, sr, 48000), 48000, subtype="PCM_16")
        out.append(dest)
    return out


def _best_of(fn, repeats):
    fn()  # warm-up: kernels for the batch shapes, file cache
    return min(timed(fn)[1] for _ in range(repeats))


def bench_fast(model_name, files48, *, threads=2, batch_size=64, repeats=3):
    """In-process clips/s of a small model on 48 kHz files: ONNX Runtime and PyTorch, decode + resample included."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    import emovox
    from emovox.export import export_model
    from emovox.inference import EmotionModel
    from emovox.runtime.onnx_backend import OnnxModel

    torch.set_num_threads(threads)
    n = len(files48)
    model = emovox.load_model(model_name)
    out = {"threads": threads, "batch_size": batch_size, "clips": n}
    with ThreadPoolExecutor(threads) as pool:
        dt = _best_of(lambda: list(pool.map(model.load, files48)), repeats)
    out["decode_resample_only"] = {"clips_per_s": n / dt}
    onnx_dir = Path(tempfile.mkdtemp(prefix="emovox_fast_onnx_"))
    export_model(model.path, onnx_dir / "x", formats=["onnx"], inputs=["waveform"])
    runtimes = {"onnxruntime": EmotionModel(OnnxModel(onnx_dir / "x", threads=threads), name=model_name),
                "torch": model}
    for name, m in runtimes.items():
        dt = _best_of(lambda m=m: m.predict_batch(files48, batch_size=batch_size, num_workers=threads), repeats)
        out[name] = {"clips_per_s": n / dt}
    shutil.rmtree(onnx_dir, ignore_errors=True)
    return out


EGEMAPS_2PROC = """
import sys
from multiprocessing import Pool
def feats(f):
    import opensmile
    global _smile
    try:
        _smile
    except NameError:
        _smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                 feature_level=opensmile.FeatureLevel.Functionals)
    return _smile.process_file(f).to_numpy()
if __name__ == "__main__":
    with Pool(2) as pool:
        rows = pool.map(feats, sys.argv[1:], chunksize=8)
    print(len(rows))
"""


def bench_classify_vs_egemaps(model_name, folder: Path, files48, batch_size=64):
    """Whole processes on the same 48 kHz files: ``emovox classify --model M FOLDER`` and eGeMAPS with 2 processes."""
    cmd = [sys.executable, "-m", "emovox.cli", "classify", str(folder), "--model", model_name, "--format", "jsonl",
           "--no-progress", "--batch-size", str(batch_size)]
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache and the imports' .pyc
    emo = [timed(subprocess.run, cmd, capture_output=True, check=True)[1] for _ in range(3)]
    ege_cmd = [sys.executable, "-c", EGEMAPS_2PROC, *map(str, files48)]
    ege = timed(subprocess.run, ege_cmd, capture_output=True, check=True)[1]
    n = len(files48)
    return {"emovox_classify_seconds": emo, "emovox_classify_clips_per_s": n / statistics.median(emo),
            "egemaps_2proc_seconds": ege, "egemaps_2proc_clips_per_s": n / ege,
            "ratio": ege / statistics.median(emo), "command": " ".join(cmd[1:])}


def run_fast(args) -> dict:
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"
    src = sorted(root.glob("Actor_0[1-4]/*.flac"))[: args.fast_clips]
    folder = Path(tempfile.mkdtemp(prefix="emovox_48k_"))
    try:
        files48 = write_48k_copies(src, folder)
        import soundfile as sf

        res = {"clips": len(files48), "clip_seconds_mean": float(np.mean([sf.info(str(f)).duration for f in files48])),
               "in_process": bench_fast(args.fast, files48, threads=args.fast_threads),
               "whole_process": bench_classify_vs_egemaps(args.fast, folder, files48)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ip, wp = res["in_process"], res["whole_process"]
    print(f"\n`{args.fast}` on {res['clips']} clips of 48 kHz WAV ({res['clip_seconds_mean']:.1f} s mean), "
          f"{ip['threads']} threads, batches of {ip['batch_size']}:")
    print("| pipeline | clips/s |\n|---|---|")
    print(f"| decode + resample only (load_audio, {ip['threads']} threads) | {ip['decode_resample_only']['clips_per_s']:.0f} |")
    print(f"| in process, ONNX Runtime, decode + resample + model | {ip['onnxruntime']['clips_per_s']:.0f} |")
    print(f"| in process, PyTorch, decode + resample + model | {ip['torch']['clips_per_s']:.0f} |")
    print(f"| `emovox classify --model {args.fast} FOLDER`, whole process | {wp['emovox_classify_clips_per_s']:.0f} |")
    print(f"| openSMILE eGeMAPSv02 functionals, 2 processes, whole process | {wp['egemaps_2proc_clips_per_s']:.1f} |")
    print(f"emovox classify is {wp['ratio']:.1f}x faster than eGeMAPS with 2 processes")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="shipped model name or folder (default: the shipped default)")
    ap.add_argument("--compare", default="", help="comma-separated shipped models also timed in-process (e.g. crnn)")
    ap.add_argument("--clips-dir", type=Path, default=None)
    ap.add_argument("--max-clips", type=int, default=120)
    ap.add_argument("--peer-clips", type=int, default=40, help="clips timed for the (slow) peers")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--fast", default=None, metavar="MODEL", help="also time this small model on 48 kHz clips")
    ap.add_argument("--fast-only", dest="fast_only", action="store_true", help="only the --fast measurements")
    ap.add_argument("--fast-clips", dest="fast_clips", type=int, default=240)
    ap.add_argument("--fast-threads", dest="fast_threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.fast and args.fast_only:
        res = {"command": " ".join([sys.executable, *sys.argv]), "machine": f"{platform.platform()}, "
               f"{os.cpu_count()} CPUs", "fast": run_fast(args)}
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))
        return 0
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
    if args.fast:
        res["fast"] = run_fast(args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

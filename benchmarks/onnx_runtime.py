"""The ONNX Runtime path against PyTorch, with peers measured in the same run (issue 15).

    python -m benchmarks.onnx_runtime speed   [--models default,crnn,streaming] [--json OUT]
    python -m benchmarks.onnx_runtime quant   [--max-clips N] [--json OUT]
    python -m benchmarks.onnx_runtime batch   [--clips N] [--rounds R] [--json OUT]

``speed``: for each model, in process on 3–4 s RAVDESS clips (decode + resampling included): clips/s of
``predict_batch`` (first pass and steady state), single-clip latency (median, p95), peak RSS of a process
that loads the model and classifies the clips, and model file sizes; for PyTorch eager and ONNX Runtime.
Then the one-clip command, ``emovox classify one.flac`` (ONNX Runtime, the default), against
``python -c "import torch"``, three runs each, alternating.

``quant``: the default model's dynamic-int8 encoder against its float32 graph on the validation speakers
of ``benchmarks/train_default.py`` (top-1 agreement, UAR of each; the issue's bar: ≥ 98 % agreement and
≤ 0.5 point of UAR), and float32 ONNX Runtime against PyTorch (largest logit difference).

``batch`` (issue 26): the default model's Whisper graph per clip length (the graph shipped before) against the
padded-batch graph (``lengths`` input), both built now from the default model, on the same clips in one process,
alternated round by round: ``predict_batch`` clips/s (decode included, batches of 16) and process CPU seconds per
clip (less sensitive to other jobs on a shared machine), spinning or sleeping intra-op threads, ONNX Runtime's
graph optimisation levels (the shipped sessions use all) and intra-op threads, clip lengths run one after another
or two at once (the shipped runtime: 1-thread runs), and single-clip ``predict`` latency; medians over the rounds,
the gain in clips/s as the median of each round's ratio to the first variant (before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ONE = ROOT / "examples" / "ravdess_03-01-05-02-01-01-12.flac"


def clips(n: int = 120) -> list[Path]:
    return (sorted((DATA / "ravdess" / "Actor_01").glob("*.flac")) +
            sorted((DATA / "ravdess" / "Actor_02").glob("*.flac")))[:n]


def _child_speed(model: str, backend: str, n: int) -> dict:
    """Runs in a fresh process (so peak RSS is this model's): throughput and latency."""
    import resource

    import emovox

    files = clips(n)
    t = time.perf_counter()
    m = emovox.load_model(model, backend=backend)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    m.predict_batch(files)
    first = time.perf_counter() - t
    steady = []
    for _ in range(2):
        t = time.perf_counter()
        m.predict_batch(files)
        steady.append(time.perf_counter() - t)
    lat = []
    for f in files[:20]:
        t = time.perf_counter()
        m.predict(f)
        lat.append(time.perf_counter() - t)
    return {"model": model, "backend": backend, "runtime": type(m.backend).__name__, "clips": len(files),
            "load_s": load_s, "clips_per_s_first_pass": len(files) / first, "clips_per_s": len(files) / min(steady),
            "latency_ms_median": 1000 * statistics.median(lat), "latency_ms_p95": 1000 * float(np.percentile(lat, 95)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _in_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.onnx_runtime", "_child", *args], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sizes(model: str) -> dict:
    from emovox.inference import resolve_model_path

    folder = resolve_model_path(model)[1]
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*.onnx")) +
            sorted(folder.glob("*.pth"))}


def _one_clip_vs_torch(repeats: int = 3) -> dict:
    cmd = [sys.executable, "-m", "emovox.cli", "classify", str(ONE), "--format", "jsonl"]
    torch_cmd = [sys.executable, "-c", "import torch"]
    subprocess.run(cmd, capture_output=True, check=True)  # the first run builds the cached graph
    ours, theirs = [], []
    for _ in range(repeats):
        for cmd_, out in ((cmd, ours), (torch_cmd, theirs)):
            t = time.perf_counter()
            subprocess.run(cmd_, capture_output=True, check=True)
            out.append(time.perf_counter() - t)
    a, b = statistics.median(ours), statistics.median(theirs)
    return {"classify_one_s": ours, "import_torch_s": theirs, "classify_median_s": a, "import_torch_median_s": b,
            "ratio": a / b}


def run_speed(models: list[str], n: int) -> dict:
    rows = []
    for model in models:
        for backend in ("torch", "onnx"):
            r = _in_child(model, backend, str(n))
            print(json.dumps(r), flush=True)
            rows.append(r)
    res = {"rows": rows, "sizes": {m: _sizes(m) for m in models}, "one_clip": _one_clip_vs_torch()}
    print(json.dumps(res["one_clip"]), flush=True)
    return res


def run_quant(max_clips: int | None) -> dict:
    """int8 vs float32 on the validation speakers; float32 vs PyTorch on the first clips."""
    import onnxruntime as ort
    from sklearn.metrics import balanced_accuracy_score

    from benchmarks.train_default import per_corpus_plan
    from emovox.audio import load_audio
    from emovox.inference import resolve_model_path
    from emovox.runtime.onnx_backend import _read_runtime, session
    from emovox.runtime.onnx_materialise import materialise

    plan, labels = per_corpus_plan(DATA, "ekman7", 0.1, 0)
    rows = plan.val[:max_clips] if max_clips else plan.val
    graph = resolve_model_path("default")[1] / "onnx" / "model.onnx"
    manifest = _read_runtime(graph)
    sessions = {q: session(materialise(graph, {**manifest, "quantization": q})) for q in ("none", "int8")}
    del ort
    logits = {q: [] for q in sessions}
    for r in rows:
        w = load_audio(r.path, sample_rate_hz=16000)[None]
        w = np.pad(w, ((0, 0), (0, max(0, manifest["min_samples"] - w.shape[1]))))
        for q, s in sessions.items():
            logits[q].append(s.run(None, _feed(s, w))[0][0])
    y = np.array([labels.index(r.label) for r in rows])
    pred = {q: np.argmax(np.array(v), 1) for q, v in logits.items()}
    out = {"clips": len(rows), "agreement_int8_vs_float": float((pred["int8"] == pred["none"]).mean()),
           "uar_float": float(balanced_accuracy_score(y, pred["none"])),
           "uar_int8": float(balanced_accuracy_score(y, pred["int8"])),
           "max_abs_logit_diff_int8": float(np.abs(np.array(logits["int8"]) - np.array(logits["none"])).max())}
    out["torch_parity"] = _torch_parity([r.path for r in rows[:20]], sessions["none"], manifest)
    print(json.dumps(out), flush=True)
    return out


def _feed(sess, w: np.ndarray) -> dict:
    """One clip's inputs: the waveform, and its length where the graph takes lengths (the padded-batch graph)."""
    names = [i.name for i in sess.get_inputs()]
    return {"waveform": w, **({"lengths": np.array([w.shape[1]], np.int64)} if "lengths" in names else {})}


def _torch_parity(paths, sess, manifest) -> dict:
    import torch

    from emovox.audio import load_audio
    from emovox.inference import resolve_model_path
    from emovox.modelio import load_model_dir

    pipe = load_model_dir(resolve_model_path("default")[1]).pipeline.eval()
    diffs = []
    for p in paths:
        w = load_audio(p, sample_rate_hz=16000)[None]
        with torch.inference_mode():
            ref = pipe(torch.from_numpy(w)).numpy()
        diffs.append(float(np.abs(sess.run(None, _feed(sess, w))[0] - ref).max()))
    return {"clips": len(paths), "max_abs_logit_diff": max(diffs), "median": statistics.median(diffs)}


BATCH_VARIANTS = {  # name: (graph, optimisation level, intra-op threads, spinning threads, clips at once)
    "per-length graph, 2 spinning threads (before)": ("old", "all", 2, True, "no"),
    "batched graph, 2 spinning threads": ("batch", "all", 2, True, "no"),
    "per-length graph, 2 threads not spinning (shipped 2026-12-07)": ("old", "all", 2, False, "no"),
    "batched graph, 2 threads not spinning": ("batch", "all", 2, False, "no"),
    "batched, not spinning, basic optimisations only": ("batch", "basic", 2, False, "no"),
    "batched, not spinning, extended optimisations": ("batch", "extended", 2, False, "no"),
    "batched, 1 thread": ("batch", "all", 1, False, "no"),
    "per-length graph, 2 clips at once on 1-thread runs (shipped)": ("old", "all", 2, False, "1-thread"),
    "per-length graph, 2 clips at once sharing the 2-thread session": ("old", "all", 2, False, "shared"),
}


def _variant_model(folders: dict, graph: str, level: str, threads: int, spin: bool, at_once: str):
    """``at_once``: ``"no"`` one clip length after another on the session; ``"1-thread"`` as many lengths at once
    as threads, each on a 1-thread session with the same settings (the runtime's default); ``"shared"`` as many at
    once on the variant's own session."""
    import onnxruntime as ort

    from emovox.inference import EmotionModel
    from emovox.runtime.onnx_backend import OnnxModel
    from emovox.runtime.onnx_materialise import materialise

    m = OnnxModel(folders[graph], threads=threads)

    def make(n_threads: int):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = n_threads, 1, 3
        opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                         "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                         "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        return ort.InferenceSession(str(materialise(m.path, m.runtime)), opts, providers=["CPUExecutionProvider"])

    m.session = make(threads)
    m.clip_workers = 1 if at_once == "no" else threads
    if at_once != "no":
        m.worker_session = m.session if at_once == "shared" else make(1)
    return EmotionModel(m, name="default")


def run_batch(n: int, rounds: int, only: list[int] | None = None) -> dict:
    """Per-length against batched graph (and the session settings) on the same clips, alternated. ``only``: the
    variants to run (numbers in :data:`BATCH_VARIANTS` from 1; the first, before, always runs)."""
    import shutil
    import tempfile

    from emovox.export.runtime_build import build_runtime
    from emovox.inference import resolve_model_path

    files = clips(n)
    load = [os.getloadavg()[0]]
    chosen = {k: v for i, (k, v) in enumerate(BATCH_VARIANTS.items(), 1) if only is None or i in only or i == 1}
    tmp = Path(tempfile.mkdtemp(prefix="emovox-batch-"))
    try:
        folders = {}
        for graph in sorted({v[0] for v in chosen.values()}):
            shutil.copytree(resolve_model_path("default")[1], tmp / graph, ignore=shutil.ignore_patterns("onnx"))
            folders[graph] = build_runtime(tmp / graph, lengths_input=graph == "batch")
        models = {k: _variant_model(folders, *v) for k, v in chosen.items()}
        speed, per_clip, latency = _batch_rounds(models, files, rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load.append(os.getloadavg()[0])
    base = next(iter(models))

    def ratio(k: str) -> float:  # each round against before in the same round: the load changes from round to round
        return statistics.median(a / b for a, b in zip(speed[k], speed[base]))

    rows = [{"variant": k, "clips_per_s": statistics.median(speed[k]), "all_clips_per_s": speed[k],
             "gain": ratio(k), "cpu_ms_per_clip": 1000 * statistics.median(per_clip[k]),
             "cpu_gain": statistics.median(per_clip[base]) / statistics.median(per_clip[k]),
             "latency_ms_median": 1000 * statistics.median(latency[k])} for k in models]
    print("| variant | clips/s (median) | × before (median of rounds) | CPU ms per clip | × before (CPU) | "
          "single clip (ms) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['clips_per_s']:.1f} | {r['gain']:.2f} | {r['cpu_ms_per_clip']:.0f} | "
              f"{r['cpu_gain']:.2f} | {r['latency_ms_median']:.0f} |")
    print(f"load average (1 min) at the start and the end: {load[0]:.2f}, {load[1]:.2f}")
    return {"clips": len(files), "rounds": rounds, "rows": rows, "load_1min": load}


def _batch_rounds(models: dict, files: list[Path], rounds: int) -> tuple[dict, dict, dict]:
    """clips/s, process CPU seconds per clip and single-clip seconds of each variant, round by round; the order of
    the variants is reversed every other round."""
    import resource

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    for m in models.values():  # warm-up: kernels, the file cache
        m.predict_batch(files[:16])
    speed: dict = {k: [] for k in models}
    per_clip: dict = {k: [] for k in models}
    latency: dict = {k: [] for k in models}
    for r in range(rounds):
        for k in list(models)[:: 1 if r % 2 == 0 else -1]:
            t, c = time.perf_counter(), cpu()
            models[k].predict_batch(files, num_workers=2)
            speed[k].append(len(files) / (time.perf_counter() - t))
            per_clip[k].append((cpu() - c) / len(files))
            for f in files[:3]:
                t = time.perf_counter()
                models[k].predict(f)
                latency[k].append(time.perf_counter() - t)
    return speed, per_clip, latency


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["speed", "quant", "batch", "_child"])
    ap.add_argument("rest", nargs="*")
    ap.add_argument("--models", default="default,crnn,streaming")
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--max-clips", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default=None, help="batch: the variants to run, numbered from 1 as listed in "
                    "BATCH_VARIANTS (e.g. 3,8,9; the first always runs)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.what == "_child":
        print(json.dumps(_child_speed(a.rest[0], a.rest[1], int(a.rest[2]))))
        return
    if a.what == "batch":
        res = run_batch(a.clips, a.rounds, [int(v) for v in a.variants.split(",")] if a.variants else None)
    else:
        res = run_speed(a.models.split(","), a.clips) if a.what == "speed" else run_quant(a.max_clips)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

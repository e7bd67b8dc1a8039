"""The ONNX Runtime path against PyTorch, with peers measured in the same run (issue 15).

    python -m benchmarks.onnx_runtime speed   [--models default,crnn,streaming] [--json OUT]
    python -m benchmarks.onnx_runtime quant   [--max-clips N] [--json OUT]

``speed``: for each model, in process on 3–4 s RAVDESS clips (decode + resampling included): clips/s of
``predict_batch`` (first pass and steady state), single-clip latency (median, p95), peak RSS of a process
that loads the model and classifies the clips, and model file sizes; for PyTorch eager and ONNX Runtime.
Then the one-clip command, ``emovox classify one.flac`` (ONNX Runtime, the default), against
``python -c "import torch"``, three runs each, alternating.

``quant``: the default model's dynamic-int8 encoder against its float32 graph on the validation speakers
of ``benchmarks/train_default.py`` (top-1 agreement, UAR of each; the issue's bar: ≥ 98 % agreement and
≤ 0.5 point of UAR), and float32 ONNX Runtime against PyTorch (largest logit difference).
"""

from __future__ import annotations

import argparse
import json
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
            logits[q].append(s.run(None, {"waveform": w})[0][0])
    y = np.array([labels.index(r.label) for r in rows])
    pred = {q: np.argmax(np.array(v), 1) for q, v in logits.items()}
    out = {"clips": len(rows), "agreement_int8_vs_float": float((pred["int8"] == pred["none"]).mean()),
           "uar_float": float(balanced_accuracy_score(y, pred["none"])),
           "uar_int8": float(balanced_accuracy_score(y, pred["int8"])),
           "max_abs_logit_diff_int8": float(np.abs(np.array(logits["int8"]) - np.array(logits["none"])).max())}
    out["torch_parity"] = _torch_parity([r.path for r in rows[:20]], sessions["none"], manifest)
    print(json.dumps(out), flush=True)
    return out


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
        diffs.append(float(np.abs(sess.run(None, {"waveform": w})[0] - ref).max()))
    return {"clips": len(paths), "max_abs_logit_diff": max(diffs), "median": statistics.median(diffs)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["speed", "quant", "_child"])
    ap.add_argument("rest", nargs="*")
    ap.add_argument("--models", default="default,crnn,streaming")
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--max-clips", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.what == "_child":
        print(json.dumps(_child_speed(a.rest[0], a.rest[1], int(a.rest[2]))))
        return
    res = run_speed(a.models.split(","), a.clips) if a.what == "speed" else run_quant(a.max_clips)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

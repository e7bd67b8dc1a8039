"""The shipped text model on ONNX Runtime against PyTorch: whole-process time, latency, throughput, dev scores.

1. ``emovox text "..."`` as a whole process (interpreter start to exit), ONNX Runtime (default) and
   ``--backend torch``, against ``python -c "import torch"`` in the same run; median of ``--repeats``, after one
   untimed run that fills the ONNX cache (its time is reported as ``first_run_s``).
2. In process: load time, one sentence (median of 100 calls) and a batch of 512 dev texts (batches of 64),
   at 1 and 2 threads on each runtime.
3. The full GoEmotions dev split on both runtimes: the largest score difference, label decisions that differ,
   and macro-F1 with the model's own thresholds.

    python -m benchmarks.text_runtime                       # about 5 minutes on 2 shared cores
    python -m benchmarks.text_runtime --skip-dev --repeats 3
    python -m benchmarks.text_runtime --compare default,mpnet,ensemble   # the shipped text models, ONNX Runtime
    python -m benchmarks.text_runtime --parity-only mpnet                 # 3. alone, for another model

``--compare`` runs only 4. the named models against one another: whole-process ``emovox text --model NAME``
(the models alternated round by round, medians), then in process at 1 and 2 threads: load, one sentence, a batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, REPO

SENTENCE = "I can't believe it worked, thank you so much!"


def _wall(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def process_times(repeats: int) -> dict:
    """Whole-process seconds (median, min) of each command; the ONNX cache is filled by an untimed first run."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    emovox = [sys.executable, "-m", "emovox.cli", "text", SENTENCE, "--format", "json"]
    cmds = {"emovox text (onnx)": emovox, "emovox text --backend torch": [*emovox, "--backend", "torch"],
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            'python -c "pass"': [sys.executable, "-c", "pass"]}
    with tempfile.TemporaryDirectory() as cache:
        first = _wall(emovox, {**env, "EMOVOX_CACHE_DIR": cache})
    _wall(emovox, env)  # the default cache, as users have it
    out = {"first_run_s (fills the cache)": round(first, 3)}
    for name, cmd in cmds.items():
        times = [_wall(cmd, env) for _ in range(repeats)]
        out[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}
    return out


def _latency(model, texts: list[str]) -> dict:
    model.predict(texts[:64])
    t0 = time.perf_counter()
    model.predict(texts, batch_size=64)
    batch_s = time.perf_counter() - t0
    single = []
    for _ in range(100):
        t = time.perf_counter()
        model.predict(SENTENCE)
        single.append(time.perf_counter() - t)
    return {"one_sentence_ms_median": round(1000 * statistics.median(single), 2),
            "batch_texts_per_s": round(len(texts) / batch_s, 1)}


def in_process(texts: list[str]) -> list[dict]:
    import torch

    from emovox.text import load_text_model

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for backend in ("onnx", "torch"):
            t0 = time.perf_counter()
            model = load_text_model(backend=backend, threads=threads)
            load_s = time.perf_counter() - t0
            rows.append({"backend": backend, "threads": threads, "load_s": round(load_s, 2), **_latency(model, texts)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def dev_parity(dev_path: Path, model: str | None = None) -> dict:
    from emovox.text import evaluate_text_model, load_text_model, read_tsv
    from emovox.text.metrics import decide

    onnx_model, torch_model = load_text_model(model, backend="onnx"), load_text_model(model, backend="torch")
    data = read_tsv(dev_path, len(onnx_model.labels))
    out: dict = {"n_texts": len(data)}
    probs = {}
    for name, model in (("onnx", onnx_model), ("torch", torch_model)):
        t0 = time.perf_counter()
        probs[name], _, _ = model.probabilities(data.texts, batch_size=64)
        out[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        rep = evaluate_text_model(model, data, probs=probs[name])
        out[f"{name}_macro_f1"] = rep["per_class_thresholds"]["macro_f1"]
        out[f"{name}_micro_f1"] = rep["per_class_thresholds"]["micro_f1"]
    out["max_abs_score_diff"] = float(np.abs(probs["onnx"] - probs["torch"]).max())
    rule = {"top_k": onnx_model.top_k, "always_one": onnx_model.always_one}
    a, b = (decide(probs[k], onnx_model.thresholds, **rule) for k in ("onnx", "torch"))
    out["texts_with_different_labels"] = int((a != b).any(1).sum())
    return out


def compare(models: list[str], texts: list[str], repeats: int) -> dict:
    from emovox.text import load_text_model

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = {m: [sys.executable, "-m", "emovox.cli", "text", SENTENCE, "--format", "json", "--model", m] for m in models}
    for m in models:
        _wall(cmd[m], env)  # fills each graph's cache
    times: dict[str, list[float]] = {m: [] for m in models}
    for r in range(repeats):
        for m in (models if r % 2 == 0 else models[::-1]):
            times[m].append(_wall(cmd[m], env))
    out: dict = {"process": {m: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3)}
                             for m, t in times.items()}, "in_process": []}
    for threads in (1, 2):
        for m in models:
            t0 = time.perf_counter()
            model = load_text_model(m, threads=threads)
            load_s = time.perf_counter() - t0
            out["in_process"].append({"model": m, "threads": threads, "load_s": round(load_s, 2),
                                      **_latency(model, texts)})
            print(json.dumps(out["in_process"][-1]), flush=True)
            del model
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dev", type=Path, default=DEFAULT_DATA / "goemotions" / "dev.tsv")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip-dev", action="store_true", help="leave out the full dev split (the longest part)")
    ap.add_argument("--parity-only", default=None, metavar="MODEL",
                    help="only 3. for this shipped name or folder (mpnet, ensemble, a folder)")
    ap.add_argument("--compare", default=None, help="comma-separated shipped names or folders: only compare them")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "text-runtime.json")
    args = ap.parse_args(argv)
    from emovox.text import read_tsv

    texts = read_tsv(args.dev, 28).texts[:512]
    if args.parity_only:
        report = {"model": args.parity_only, "dev": dev_parity(args.dev, args.parity_only)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return 0
    if args.compare:
        report = {"load_average_start": os.getloadavg(),
                  **compare(args.compare.split(","), texts, args.repeats), "load_average_end": os.getloadavg()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return 0
    report = {"cpus": len(os.sched_getaffinity(0)), "load_average_start": os.getloadavg(),
              "process": process_times(args.repeats)}
    print(json.dumps(report, indent=2), flush=True)
    report["in_process"] = in_process(texts)
    if not args.skip_dev:
        report["dev"] = dev_parity(args.dev)
    report["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Text emotion benchmark: frozen encoder + MLP head vs fine-tuned top layers, on GoEmotions dev.

Each configuration is trained with the ``emovox text-train`` command line printed in the report
(thresholds tuned on dev), then scored; the shipped default model is scored on dev too, and
inference speed is timed on dev texts. Dev figures are optimistic (the kept epoch and the
thresholds were chosen on dev); ``crossfit`` re-tunes thresholds on one half of dev and scores
the other half, an estimate for unseen text. The official test split is measured elsewhere.

    .venv/bin/python -m benchmarks.text_benchmark                    # all configs (~40 min on 2 cores)
    .venv/bin/python -m benchmarks.text_benchmark --configs frozen   # one config
    .venv/bin/python -m benchmarks.text_benchmark --quick            # smoke run on 2000/500 lines
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import DEFAULT_DATA, REPO

ROOT = REPO
DATA = DEFAULT_DATA / "goemotions"

#: name → extra text-train arguments.
CONFIGS = {
    "frozen": ["--mode", "frozen"],
    "frozen-focal": ["--mode", "frozen", "--loss", "focal"],
    "finetune1": ["--mode", "finetune", "--finetune-layers", "1", "--epochs", "3", "--precision", "bf16"],
    "finetune2": ["--mode", "finetune", "--finetune-layers", "2", "--epochs", "3", "--precision", "bf16"],
}
DEFAULT_CONFIGS = ("frozen", "finetune2")


def _emovox() -> list[str]:
    return [sys.executable, "-m", "emovox.cli"]


def _run(cmd: list[str]) -> float:
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.time() - t0


def _own_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.iterdir()
               if p.suffix in (".safetensors", ".json") and p.name != "model_meta.json")


def _speed(model_dir: Path | None, texts: list[str]) -> dict:
    from emovox.text import load_text_model

    t0 = time.time()
    model = load_text_model(model_dir)
    load_s = time.time() - t0
    model.predict(texts[:64])
    t0 = time.time()
    model.predict(texts)
    batch_s = time.time() - t0
    t0 = time.time()
    for t in texts[:50]:
        model.predict(t)
    single_ms = (time.time() - t0) / 50 * 1000
    return {"load_s": round(load_s, 2), "texts_per_s_batched": round(len(texts) / batch_s, 1),
            "ms_per_single_text": round(single_ms, 1)}


def _subset(src: Path, dst: Path, n: int) -> Path:
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(f.readline() for _ in range(n)), encoding="utf-8")
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=DATA / "train.tsv")
    ap.add_argument("--dev", type=Path, default=DATA / "dev.tsv")
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "text")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated, from: {', '.join(CONFIGS)}")
    ap.add_argument("--quick", action="store_true", help="2000 train / 500 dev lines, 1 epoch (smoke run)")
    ap.add_argument("--reuse", action="store_true", help="skip training where OUT/NAME already holds a model")
    args = ap.parse_args()
    if not args.train.is_file():
        print(f"no GoEmotions data at {args.train}; pass --train/--dev", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    train, dev = args.train, args.dev
    if args.quick:
        train = _subset(train, args.out / "train-quick.tsv", 2000)
        dev = _subset(dev, args.out / "dev-quick.tsv", 500)

    from emovox.text import evaluate_text_model, load_text_model, read_tsv

    dev_data = read_tsv(dev, 28)
    results = []
    for name in args.configs.split(","):
        extra = list(CONFIGS[name])
        if args.quick:
            extra += ["--epochs", "1"]
        out = args.out / name
        cmd = [*_emovox(), "-v", "text-train", "--train", str(train), "--dev", str(dev), "--output-dir", str(out),
               *extra]
        wall = None
        if not (args.reuse and (out / "metrics_overall.json").is_file()):
            wall = _run(cmd)
        m = json.loads((out / "metrics_overall.json").read_text())
        results.append({
            "config": name,
            "command": "emovox " + " ".join(shlex.quote(c) for c in cmd[4:]),
            "train_wall_s": None if wall is None else round(wall, 1),
            "dev_macro_f1": m["per_class_thresholds"]["macro_f1"],
            "dev_macro_f1_crossfit": m["per_class_thresholds_crossfit"]["macro_f1"],
            "dev_macro_f1_global": m["global_threshold"]["macro_f1"],
            "dev_micro_f1": m["per_class_thresholds"]["micro_f1"],
            "dev_auroc_macro": m["auroc_macro"],
            "dev_ekman_macro_f1": m.get("ekman", {}).get("macro_f1"),
            "own_bytes": _own_bytes(out),
            **_speed(out, dev_data.texts[:512]),
        })
        print(json.dumps(results[-1], indent=2), flush=True)

    try:
        shipped = load_text_model()
    except ValueError as e:
        print(f"shipped model not scored: {e}", file=sys.stderr)
    else:
        rep = evaluate_text_model(shipped, dev_data, out_dir=args.out / "shipped-dev")
        results.append({"config": "shipped default", "command": f"emovox text-evaluate --data {dev} "
                        f"--output-dir {args.out / 'shipped-dev'}",
                        "dev_macro_f1": rep["per_class_thresholds"]["macro_f1"],
                        "dev_macro_f1_global": rep["global_threshold"]["macro_f1"],
                        "dev_micro_f1": rep["per_class_thresholds"]["micro_f1"],
                        "dev_auroc_macro": rep["auroc_macro"],
                        "dev_ekman_macro_f1": rep.get("ekman", {}).get("macro_f1"),
                        "own_bytes": _own_bytes(shipped.path), **_speed(None, dev_data.texts[:512])})

    (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    cols = ("config", "dev_macro_f1", "dev_macro_f1_crossfit", "dev_macro_f1_global", "dev_micro_f1",
            "dev_auroc_macro", "dev_ekman_macro_f1", "own_bytes", "train_wall_s", "texts_per_s_batched")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = [f"{r.get(c):.4f}" if isinstance(r.get(c), float) and c.startswith("dev") else
                 ("" if r.get(c) is None else str(r.get(c))) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {r['config']}: `{r['command']}`" for r in results)]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

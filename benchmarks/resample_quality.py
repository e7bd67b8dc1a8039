"""A model's validation answers when 48-kHz input reaches it through each of soxr's resampling qualities.

The validation speakers' clips of the default split (16-kHz FLAC here) are brought to 48 kHz with soxr VHQ; the
``noisy`` copies add full-band white noise at 48 kHz (20 dB below the clip, seeded per clip) so that content above
8 kHz can alias. Each copy is brought back to 16 kHz at VHQ, HQ, MQ, LQ and QQ; the model's UAR and its answers'
agreement with VHQ are printed, and the cost of each quality on 40 clips (best of 5).

    python -m benchmarks.resample_quality [--model fast] [--out bench_out/resample-quality.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, REPO, per_corpus_plan

QUALITIES = ("VHQ", "HQ", "MQ", "LQ", "QQ")


def copies_48k(model, rows, noisy: bool) -> list[np.ndarray]:
    import soxr

    out = []
    for i, r in enumerate(rows):
        x = soxr.resample(model.load(r.path), 16000, 48000, quality="VHQ").astype(np.float32)
        if noisy:
            n = np.random.default_rng(i).standard_normal(len(x)).astype(np.float32)
            x = x + n * np.sqrt(np.mean(x ** 2) / np.mean(n ** 2) / 100)
        out.append(x)
    return out


def cost_ms(waves: list[np.ndarray]) -> dict[str, float]:
    import soxr

    out = {}
    for q in QUALITIES:
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for x in waves:
                soxr.resample(x, 48000, 16000, quality=q)
            best = min(best, (time.perf_counter() - t) / len(waves))
        out[q] = round(1000 * best, 3)
    return out


def main(argv=None) -> int:
    import soxr
    from sklearn.metrics import balanced_accuracy_score

    import emovox

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fast")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "resample-quality.json")
    args = ap.parse_args(argv)
    plan, labels = per_corpus_plan(DEFAULT_DATA, "ekman7", 0.1, 0)
    rows, model = plan.val, emovox.load_model(args.model)
    y = np.array([labels.index(r.label) for r in rows])
    report: dict = {"model": args.model, "clips": len(rows)}
    for kind in ("clean", "noisy"):
        src = copies_48k(model, rows, kind == "noisy")
        if kind == "clean":
            report["ms_per_clip_48k_to_16k"] = cost_ms(src[:40])
        ref = None
        for q in QUALITIES:
            pred = model.probabilities([soxr.resample(x, 48000, 16000, quality=q).astype(np.float32)
                                        for x in src]).argmax(1)
            ref = pred if ref is None else ref
            report[f"{kind} {q}"] = {"uar": round(100 * balanced_accuracy_score(y, pred), 2),
                                     "same_answer_as_VHQ_pct": round(100 * float(np.mean(pred == ref)), 2)}
            print(kind, q, report[f"{kind} {q}"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

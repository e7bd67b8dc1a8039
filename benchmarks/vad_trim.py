"""The default model on speech-only spans: each validation clip whole and cut from its first speech segment's
start to its last one's end (Silero VAD, the segments' default options), with the model and probe as shipped.
Prints UAR, agreement, the time of the VAD and of the model on both inputs.

    python -m benchmarks.vad_trim [--model default]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import DEFAULT_DATA, per_corpus_plan


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - t, 1), round(time.process_time() - c, 1)


def main(argv=None) -> int:
    from sklearn.metrics import balanced_accuracy_score

    import emovox
    from emovox.segments.windows import speech_spans

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    args = ap.parse_args(argv)
    plan, labels = per_corpus_plan(DEFAULT_DATA, "ekman7", 0.1, 0)
    model = emovox.load_model(args.model)
    y = np.array([labels.index(r.label) for r in plan.val])
    whole = [model.load(r.path) for r in plan.val]
    spans, vad_s, _ = timed(lambda: [speech_spans(w, model.sample_rate_hz) for w in whole])
    trimmed = [w[s[0][0]:s[-1][1]] if s else w for w, s in zip(whole, spans)]
    report = {"clips": len(whole), "no_speech_found": sum(not s for s in spans),
              "samples_kept": round(sum(map(len, trimmed)) / sum(map(len, whole)), 3),
              "vad_ms_per_clip": round(1000 * vad_s / len(whole), 2)}
    preds = {}
    for name, waves in (("whole", whole), ("trimmed", trimmed)):
        probs, wall, cpu = timed(lambda waves=waves: model.probabilities(waves))
        preds[name] = probs.argmax(1)
        report[name] = {"uar": round(100 * balanced_accuracy_score(y, preds[name]), 2), "seconds": wall,
                        "cpu_seconds": cpu}
    report["same_answer_pct"] = round(100 * float(np.mean(preds["whole"] == preds["trimmed"])), 2)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

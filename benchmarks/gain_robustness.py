"""How a shipped model's answers depend on the recording level: validation speakers at other gains.

A user's recording comes at whatever level their microphone gave it. This scales every validation
clip of the model (the speakers held out in ``model_meta.json``) by a gain in dB (float samples,
no clipping) and reports UAR per corpus (argmax over the labels each corpus has), with the number
of clips whose top label changed against 0 dB.

    python -m benchmarks.gain_robustness [--model default] [--gains=-20,-10,0,6] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, validation_clips


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="shipped model name or folder (default: the default model)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--gains", default="-20,-10,0,6", help="comma-separated gains in dB")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from sklearn.metrics import balanced_accuracy_score

    import emovox
    from emovox.atomic import write_json

    gains = [float(g) for g in args.gains.split(",")]
    if 0.0 not in gains:
        gains.append(0.0)
    model = emovox.load_model(args.model)
    out = {"model": str(model.path), "gains_db": gains, "corpora": {}}
    for corpus, kept, labs in validation_clips(model, args.data):
        cols = [model.labels.index(c) for c in labs]
        waves = [model.load(r.path) for r in kept]
        y = np.array([r.label for r in kept])
        preds = {}
        for g in gains:
            probs = model.probabilities([w * np.float32(10 ** (g / 20)) for w in waves])
            preds[g] = np.array(labs)[probs[:, cols].argmax(1)]
        res = {}
        for g in gains:
            res[g] = {"uar": 100 * balanced_accuracy_score(y, preds[g]),
                      "changed_vs_0db": int((preds[g] != preds[0.0]).sum())}
            print(f"{corpus} ({len(kept)} clips) {g:+.0f} dB: UAR {res[g]['uar']:.1f}, "
                  f"top label changed on {res[g]['changed_vs_0db']} clips")
        out["corpora"][corpus] = {"clips": len(kept), "by_gain": {str(g): v for g, v in res.items()}}
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

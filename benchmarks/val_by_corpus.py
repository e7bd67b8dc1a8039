"""A shipped model's validation speakers, scored corpus by corpus (RAVDESS, CREMA-D and nEMO separately).

    python -m benchmarks.val_by_corpus [--model default] [--data ../shared/data]

Reads the validation speakers from the model's ``model_meta.json`` and prints UAR and accuracy per
corpus (argmax over the labels each corpus has), and `core4` UAR (argmax over neutral, happy, sad,
angry).
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
    args = ap.parse_args(argv)
    from sklearn.metrics import balanced_accuracy_score

    import emovox

    model = emovox.load_model(args.model)
    core = ["neutral", "happy", "sad", "angry"]
    for corpus, kept, labs in validation_clips(model, args.data):
        preds = model.predict_batch([r.path for r in kept])
        y = np.array([r.label for r in kept])
        p = np.array([max(labs, key=lambda c, q=q: q.scores[c]) for q in preds])
        m4 = np.isin(y, core)
        p4 = np.array([max(core, key=lambda c, q=q: q.scores[c]) for q, keep in zip(preds, m4) if keep])
        print(f"{corpus}: {len(kept)} clips, {len({r.speaker for r in kept})} speakers, {len(labs)} labels: "
              f"UAR {100 * balanced_accuracy_score(y, p):.1f}, accuracy {100 * np.mean(y == p):.1f}; "
              f"core4 UAR {100 * balanced_accuracy_score(y[m4], p4):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Why cross-corpus scores collapse: eGeMAPS+SVM across RAVDESS and CREMA-D (core4) with three
feature normalisations.

- ``none``: standardised with the training corpus's statistics only (what a deployed model sees);
- ``corpus``: each corpus standardised with its own statistics (needs the test corpus's
  unlabelled features, i.e. transductive);
- ``speaker``: each speaker standardised with their own statistics (needs several clips per
  speaker).

    python -m benchmarks.cross_corpus_norm [--data ../shared/data] [--C 1.0]

Prints UAR and how many test clips each class received. eGeMAPS features are read from (and
written to) the same cache as ``speech_benchmark.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks import speech_benchmark as sb
from benchmarks.common import DEFAULT_DATA


def normalise(x: np.ndarray, speakers: np.ndarray, mode: str) -> np.ndarray:
    from sklearn.preprocessing import StandardScaler

    if mode == "corpus":
        return StandardScaler().fit_transform(x)
    if mode == "speaker":
        out = np.empty_like(x)
        for s in np.unique(speakers):
            m = speakers == s
            out[m] = StandardScaler().fit_transform(x[m])
        return out
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from emovox.data.cache import default_cache_dir
    from emovox.training.plan import map_labels

    ns = argparse.Namespace(data=args.data, limit=None, quick=False, seed=0)
    data, labels = {}, None
    for name in ("ravdess", "crema-d"):
        kept, labels, _, _ = map_labels(sb.load_corpus(ns, name), "core4")
        x = sb.egemaps_features(kept, default_cache_dir(), args.workers)
        data[name] = (x, np.array([labels.index(r.label) for r in kept]), np.array([r.speaker for r in kept]))
    print(f"labels: {', '.join(labels)}; RBF SVM, C={args.C}, balanced class weights")
    print("| normalisation | train → test | UAR % | test clips predicted per class |")
    print("|---|---|---|---|")
    for mode in ("none", "corpus", "speaker"):
        for src, dst in (("ravdess", "crema-d"), ("crema-d", "ravdess")):
            (xs, ys, ss), (xt, yt, st) = data[src], data[dst]
            xs, xt = normalise(xs, ss, mode), normalise(xt, st, mode)
            scaler = StandardScaler().fit(xs)
            clf = SVC(C=args.C, class_weight="balanced").fit(scaler.transform(xs), ys)
            pred = clf.predict(scaler.transform(xt))
            counts = ", ".join(f"{lab} {n}" for lab, n in zip(labels, np.bincount(pred, minlength=len(labels))))
            print(f"| {mode} | {src} → {dst} | {100 * balanced_accuracy_score(yt, pred):.1f} | {counts} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""A linear probe on cached backbone states: each layer's states averaged over time, standardised, and a
class-balanced logistic regression, on the default model's split (``benchmarks/train_default.py``: ~10 % of
each corpus's speakers for validation). A reference for the trained heads: it is how the Whisper issue first
measured the encoders. Reads the cache that ``benchmarks/whisper_cache.py`` fills.

    python -m benchmarks.whisper_probe --backbone whisper-base --C 0.001,0.01,0.1
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.train_default import DEFAULT_DATA, per_corpus_plan


def layer_means(rows, store) -> np.ndarray:
    out = []
    for r in rows:
        states = store.get(r.path)
        if states is None:
            raise SystemExit(f"{r.path} is not in the cache {store.dir}: run benchmarks/whisper_cache.py first")
        out.append(np.asarray(states, dtype=np.float32).mean(axis=-1).reshape(-1))
    return np.stack(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="whisper-base")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--C", default="0.001,0.01,0.1", help="inverse regularisation strengths to try")
    args = p.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    from emovox.backbones import HiddenStateCache, load_backbone
    from emovox.data import default_cache_dir

    plan, labels = per_corpus_plan(args.data, "ekman7", 0.1, 0)
    backbone = load_backbone(args.backbone)
    store = HiddenStateCache(default_cache_dir(), backbone, list(range(backbone.num_layers + 1)))
    scaler = StandardScaler().fit(x_train := layer_means(plan.train, store))
    x_train, x_val = scaler.transform(x_train), scaler.transform(layer_means(plan.val, store))
    y_train = np.array([labels.index(r.label) for r in plan.train])
    y_val = np.array([labels.index(r.label) for r in plan.val])
    corpus = np.array([r.corpus for r in plan.val])
    for c in (float(v) for v in args.C.split(",")):
        pred = LogisticRegression(C=c, max_iter=300, class_weight="balanced").fit(x_train, y_train).predict(x_val)
        parts = [f"{name} {100 * balanced_accuracy_score(y_val[corpus == name], pred[corpus == name]):.1f}"
                 for name in ("ravdess", "crema-d", "nemo")]
        print(f"C={c:g}: validation UAR {100 * balanced_accuracy_score(y_val, pred):.1f}; " + ", ".join(parts),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

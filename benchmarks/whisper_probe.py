#!/usr/bin/env python
"""A linear probe on cached backbone states: each layer's states averaged over time, standardised, and a
class-balanced logistic regression, on the default model's split (``benchmarks/train_default.py``: ~10 % of
each corpus's speakers for validation). A reference for the trained heads: it is how the Whisper issue first
measured the encoders. Reads the cache that ``benchmarks/whisper_cache.py`` fills.

    python -m benchmarks.whisper_probe --backbone whisper-base --C 0.001,0.01,0.1
    python -m benchmarks.whisper_probe --protocol ravdess8 --C 0.01     # the 5 speaker folds of speech_benchmark
    python -m benchmarks.whisper_probe --protocol cross --C 0.01        # core4, RAVDESS <-> CREMA-D
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import DEFAULT_DATA, per_corpus_plan


def layer_means(rows, store) -> np.ndarray:
    out = []
    for r in rows:
        states = store.get(r.path)
        if states is None:
            raise SystemExit(f"{r.path} is not in the cache {store.dir}: run python -m benchmarks.whisper_cache first")
        out.append(np.asarray(states, dtype=np.float32).mean(axis=-1).reshape(-1))
    return np.stack(out)


def probe_uar(c: float, train: tuple, test: tuple) -> tuple[float, np.ndarray]:
    """Fit the probe on ``(features, labels)`` and return the test UAR and predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train[0])
    clf = LogisticRegression(C=c, max_iter=300, class_weight="balanced").fit(scaler.transform(train[0]), train[1])
    pred = clf.predict(scaler.transform(test[0]))
    return float(balanced_accuracy_score(test[1], pred)), pred


def xy(rows, labels, store) -> tuple[np.ndarray, np.ndarray]:
    return layer_means(rows, store), np.array([labels.index(r.label) for r in rows])


def run_protocol(protocol: str, data, store, cs) -> None:
    """The speech_benchmark protocols ``ravdess8`` (5 speaker folds) and ``cross`` (core4 both ways)."""
    from emovox.data.corpora import scan
    from emovox.training.config import TrainConfig
    from emovox.training.plan import map_labels, plan_splits

    if protocol == "ravdess8":
        kept, labels, _, _ = map_labels(scan(data / "ravdess", "ravdess", with_duration=False), "ravdess8")
        plans = plan_splits(kept, TrainConfig(folds=5, seed=0))
        for c in cs:
            uars = [probe_uar(c, xy(p.train + p.val, labels, store), xy(p.test, labels, store))[0] for p in plans]
            print(f"C={c:g}: ravdess8 UAR {100 * np.mean(uars):.1f} ± {100 * np.std(uars):.1f} "
                  f"(folds {', '.join(f'{100 * u:.1f}' for u in uars)})", flush=True)
        return
    sets = {}
    for corpus in ("ravdess", "crema-d"):
        rows, labels, _, _ = map_labels(scan(data / corpus, corpus, with_duration=False), "core4")
        sets[corpus] = xy(rows, labels, store)
    for c in cs:
        for src, dst in (("ravdess", "crema-d"), ("crema-d", "ravdess")):
            print(f"C={c:g}: {src} -> {dst} (core4) UAR {100 * probe_uar(c, sets[src], sets[dst])[0]:.1f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="whisper-base")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--C", default="0.001,0.01,0.1", help="inverse regularisation strengths to try")
    p.add_argument("--protocol", default="default", choices=["default", "ravdess8", "cross"])
    args = p.parse_args(argv)
    from pathlib import Path

    from sklearn.metrics import balanced_accuracy_score

    from emovox.data.backbone_data import HiddenStateCache
    from emovox.data.cache import default_cache_dir
    from emovox.pretrained.backbone_loading import load_backbone

    backbone = load_backbone(args.backbone)
    store = HiddenStateCache(default_cache_dir(), backbone, list(range(backbone.num_layers + 1)))
    cs = [float(v) for v in args.C.split(",")]
    if args.protocol != "default":
        run_protocol(args.protocol, Path(args.data), store, cs)
        return 0
    plan, labels = per_corpus_plan(Path(args.data), "ekman7", 0.1, 0)
    train, val = xy(plan.train, labels, store), xy(plan.val, labels, store)
    corpus = np.array([r.corpus for r in plan.val])
    for c in cs:
        uar, pred = probe_uar(c, train, val)
        parts = [f"{name} {100 * balanced_accuracy_score(val[1][corpus == name], pred[corpus == name]):.1f}"
                 for name in ("ravdess", "crema-d", "nemo")]
        print(f"C={c:g}: validation UAR {100 * uar:.1f}; " + ", ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

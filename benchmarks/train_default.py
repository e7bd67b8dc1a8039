#!/usr/bin/env python
"""Train the default model: a head on frozen Whisper-base states, on RAVDESS + CREMA-D + nEMO (ekman7),
with about 10 % of each corpus's speakers held out for validation (early stopping, calibration, and the
per-corpus figures of the model card). Resumable (``--resume`` continues from the checkpoint).

    python -m benchmarks.train_default --out runs/default_probe                      # the shipped default
    python -m benchmarks.train_default --out runs/default_attention --head attention --label-scope corpus

Prints the validation UAR per corpus: over the classes that corpus has with the argmax over all seven
labels (what a user gets), and with the argmax restricted to that corpus's classes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import CORPORA, DEFAULT_DATA, per_corpus_plan


def per_corpus_uar(out: Path, plan, data: Path) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    import emovox

    model = emovox.load_model(out)
    result = {}
    for corpus in CORPORA:
        rows = [r for r in plan.val if r.corpus == corpus]
        if not rows:
            continue
        preds = model.predict_batch([r.path for r in rows])
        y = np.array([r.label for r in rows])
        has = sorted(set(y))
        p_all = np.array([q.label for q in preds])
        p_own = np.array([max(has, key=lambda c, q=q: q.scores[c]) for q in preds])
        result[corpus] = {"clips": len(rows), "speakers": len({r.speaker for r in rows}), "classes": has,
                          "uar": float(balanced_accuracy_score(y, p_all)),
                          "uar_own_classes": float(balanced_accuracy_score(y, p_own)),
                          "accuracy": float(np.mean(y == p_all))}
        print(f"{corpus}: {len(rows)} clips, {result[corpus]['speakers']} speakers, {len(has)} classes: "
              f"UAR {100 * result[corpus]['uar']:.1f} (argmax over all labels), "
              f"{100 * result[corpus]['uar_own_classes']:.1f} (over its own classes)", flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--backbone", default="whisper-base")
    p.add_argument("--head", default="mean", help="mean (the shipped default: a linear probe), attention or cnn")
    p.add_argument("--head-options", dest="head_options", type=json.loads, default={},
                   help='JSON head settings, e.g. \'{"dropout": 0.5, "channels": 64}\'')
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=1e-2)
    p.add_argument("--labels", default="ekman7")
    p.add_argument("--label-scope", dest="label_scope", default="all", choices=["all", "corpus"])
    p.add_argument("--probe-c", dest="probe_c", default=None,
                   help="the mean head's inverse L2 strengths, comma-separated (default: emovox's grid)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-fraction", dest="val_fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpora", default=",".join(CORPORA), help="training corpora (validation speakers from each)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    import torch

    from emovox.atomic import write_json
    from emovox.training.config import TrainConfig
    from emovox.training.run import train_model

    torch.set_num_threads(args.threads)
    corpora = tuple(args.corpora.split(","))
    plan, labels = per_corpus_plan(args.data, args.labels, args.val_fraction, args.seed, corpora)
    print(f"{len(plan.train)} training clips, {len(plan.val)} validation clips; {plan.message}", flush=True)
    cfg = TrainConfig(model="ssl", model_kwargs={"backbone": args.backbone, "head": args.head, **args.head_options},
                      labels=args.labels, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                      lr_schedule="cosine", warmup_epochs=1.0, early_stopping_patience=args.patience, seed=args.seed,
                      label_scope=args.label_scope,
                      probe_c=[float(c) for c in args.probe_c.split(",")] if args.probe_c else None)
    command = "python -m benchmarks.train_default " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    meta = {"command": command, "corpora": list(corpora), "data_dirs": [str(args.data / c) for c in corpora]}
    res = train_model(plan, labels, cfg, args.out, cache=True, resume=args.resume, meta=meta,
                      echo=lambda s: print(f"  {s}", flush=True))
    print(f"validation UAR {100 * res.metrics['uar']:.1f}, ECE {res.metrics['ece']:.3f} -> "
          f"{res.metrics['ece_calibrated']:.3f}", flush=True)
    write_json(args.out / "val_by_corpus.json", {"command": command, "corpora": per_corpus_uar(args.out, plan, args.data)})
    print(json.dumps({"label_scope": args.label_scope, "val_uar": res.metrics["uar"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

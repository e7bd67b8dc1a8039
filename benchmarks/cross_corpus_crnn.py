"""Cross-corpus CRNN, one run per direction: the issue's proxy for unseen recordings.

Trains a ``crnn`` on ``core4`` (neutral, happy, sad, angry) of one corpus (80/20 speaker-independent
train/validation split for early stopping) and tests it on every ``core4`` clip of the other corpus,
with the same settings as the cross-corpus column of ``speech_benchmark.py``. Use it to compare
front-ends and input normalisations on the question that matters for a shipped model: does it hold
up on a corpus it has never heard?

    python -m benchmarks.cross_corpus_crnn --direction r2c --features logmel128l [--json OUT]

``--direction``: ``r2c`` (RAVDESS → CREMA-D) or ``c2r`` (CREMA-D → RAVDESS).
``--features``: a preset (``logmel128``: plain log-mel; ``logmel128l``: with speech-level
normalisation); ``--input-norm``: the CRNN's ``global`` or ``utterance`` (per-band clip mean) option.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import speech_benchmark as sb
from benchmarks.common import DEFAULT_DATA


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--direction", choices=["r2c", "c2r"], required=True)
    ap.add_argument("--features", default="logmel128")
    ap.add_argument("--input-norm", choices=["global", "utterance"], default="global")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="training seed (the split stays that of seed 0)")
    ap.add_argument("--gain-db", type=float, default=None, help="gain augmentation range (default: emovox's 6 dB)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: emovox's)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/cross_crnn"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from emovox.atomic import write_json
    from emovox.data.cache import default_cache_dir
    from emovox.training.config import TrainConfig
    from emovox.training.run import train_model

    torch.set_num_threads(args.threads)
    opts = argparse.Namespace(data=args.data, limit=None, quick=False, seed=0, folds=5, run_folds=None)
    corpora = {n: sb.load_corpus(opts, n) for n in ("ravdess", "crema-d")}
    protocol = "ravdess_to_crema" if args.direction == "r2c" else "crema_to_ravdess"
    labels, plans, desc = sb.protocol_plans(opts, protocol, corpora)
    cfg = TrainConfig(model="crnn", features=args.features, epochs=args.epochs, batch_size=32, lr=3e-3,
                      mixup_alpha=0.2, lr_schedule="cosine", warmup_epochs=2.0, augment=True,
                      early_stopping_patience=8, seed=args.seed, num_workers=1,
                      model_kwargs={"input_norm": args.input_norm},
                      augmentation={} if args.gain_db is None else {"gain_db": args.gain_db})
    tag = "" if args.gain_db is None else f"_gain{args.gain_db:g}"
    out = args.out / f"{args.direction}_{args.features}_{args.input_norm}{tag}_seed{args.seed}"
    t0 = time.perf_counter()
    res = train_model(plans[0], labels, cfg, out, cache=args.cache_dir or default_cache_dir(), echo=print,
                      plots=False)
    result = {"direction": args.direction, "protocol": desc, "features": args.features,
              "input_norm": args.input_norm, "gain_db": args.gain_db, "seed": args.seed, "epochs": args.epochs,
              "best_epoch": res.best_epoch,
              "test_uar": res.metrics["uar"], "test_accuracy": res.metrics["accuracy"],
              "seconds": time.perf_counter() - t0,
              "command": "python -m benchmarks.cross_corpus_crnn " + " ".join(argv or sys.argv[1:])}
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Accuracy and calibration under the conditions users record in, on the default model's validation speakers.

Three steps, each resumable (pooled encoder states are cached per clip, degradation and seed):

    python -m benchmarks.robustness cache --copies 2      # pooled Whisper states: evaluation conditions, training copies
    python -m benchmarks.robustness fit --copies 0,1,2    # multi-condition probes, picked on validation speakers
    python -m benchmarks.robustness table --out runs/robustness   # UAR + ECE per condition, every model and peer

Evaluation clips: a fixed, label-stratified subset of the validation speakers' clips (all RAVDESS, 90 CREMA-D,
90 nEMO). Their babble is made of *validation* speakers other than the clip's own, their noise and rooms are drawn
with seeds of an evaluation namespace: never the files or seeds used in training. Training copies use the
``real-world`` preset (babble of training speakers, synthetic colour noise, rooms, telephone, codecs, level).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import CORPORA, DEFAULT_DATA, per_corpus_plan

EVAL_PER_CORPUS = {"ravdess": None, "crema-d": 90, "nemo": 90}  # None: every validation clip
# (label, spec): the evaluation conditions, most asked-about first (a partial cache run covers those)
CONDITIONS = [
    ("clean", None), ("babble 10 dB", "babble:10"), ("pink 5 dB", "pink:5"), ("room RT60 0.6 s", "room:0.6"),
    ("telephone (8 kHz, mu-law)", "telephone"), ("MP3 32 kbit/s", "mp3:32"), ("30 dB quieter", "gain:-30"),
    ("babble 0 dB", "babble:0"), ("babble 5 dB", "babble:5"), ("babble 20 dB", "babble:20"),
    ("pink 0 dB", "pink:0"), ("pink 10 dB", "pink:10"), ("pink 20 dB", "pink:20"),
    ("white 0 dB", "white:0"), ("white 5 dB", "white:5"), ("white 10 dB", "white:10"), ("white 20 dB", "white:20"),
    ("room RT60 0.3 s", "room:0.3"), ("room RT60 1.0 s", "room:1.0"), ("Opus 12 kbit/s", "opus:12"),
    ("clipped (5 %)", "clip:5"),
]
TARGETS = {"babble 10 dB": 60, "pink 5 dB": 55, "room RT60 0.6 s": 62, "telephone (8 kHz, mu-law)": 68,
           "MP3 32 kbit/s": 70}
TRAIN_PRESET = "real-world"


def evaluation_rows(val_rows, seed: int = 0):
    """The fixed evaluation subset: per corpus, every clip or a label-stratified sample."""
    rng = np.random.default_rng(seed)
    out = []
    for corpus in CORPORA:
        rows = [r for r in val_rows if r.corpus == corpus]
        n = EVAL_PER_CORPUS.get(corpus)
        if n is None or n >= len(rows):
            out += rows
            continue
        labels = sorted({r.label for r in rows})
        per = {lab: [r for r in rows if r.label == lab] for lab in labels}
        take = []
        for k, lab in enumerate(labels):
            m = n // len(labels) + (1 if k < n % len(labels) else 0)
            idx = rng.choice(len(per[lab]), size=min(m, len(per[lab])), replace=False)
            take += [per[lab][i] for i in sorted(idx)]
        out += take
    return out


def setup(data: Path, threads: int | None = None):
    """The default model's split (checked against its model_meta.json), its pooled-feature encoder on ONNX
    Runtime, and the pooled-state cache."""
    import json

    from emovox.data import default_cache_dir
    from emovox.degrade.multicondition import PooledEncoder, PooledStateCache
    from emovox.inference import resolve_model_path

    plan, labels = per_corpus_plan(data, "ekman7", 0.1, seed=0)
    folder = resolve_model_path("default")[1]
    meta = json.loads((folder / "model_meta.json").read_text())
    if sorted(plan.val_speakers) != sorted(meta["split"]["val_speakers"]):
        sys.exit(f"the split differs from the shipped default's: {plan.val_speakers} vs {meta['split']['val_speakers']}")
    encoder = PooledEncoder(folder, threads=threads)
    return plan, labels, encoder, PooledStateCache(default_cache_dir(), encoder)


def _progress(desc: str):
    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        if done % 250 == 0 or done == total:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"  {desc}: {done}/{total} ({rate:.1f} clips/s)", flush=True)

    return report


def condition_degrader(spec: str, val_rows):
    from emovox.degrade import parse_spec

    return parse_spec(spec, babble=[str(r.path) for r in val_rows], babble_speakers=[r.speaker for r in val_rows])


def training_degrader(train_rows):
    from emovox.degrade import parse_spec

    return parse_spec(TRAIN_PRESET, babble=[str(r.path) for r in train_rows],
                      babble_speakers=[r.speaker for r in train_rows])


def cmd_cache(args) -> None:
    from emovox.degrade.multicondition import pooled_rows

    plan, _, encoder, cache = setup(args.data, args.threads)
    ev = evaluation_rows(plan.val)
    print(f"cache {cache.dir}; {len(plan.train)} training clips, {len(plan.val)} validation clips "
          f"({len(ev)} in the degraded evaluation)", flush=True)
    pooled_rows(plan.val, cache, encoder, progress=_progress("validation, clean"))
    for name, spec in CONDITIONS[1:]:
        pooled_rows(ev, cache, encoder, degrader=condition_degrader(spec, plan.val), namespace="eval",
                    progress=_progress(f"validation, {name}"))
    if args.skip_train:
        return
    pooled_rows(plan.train, cache, encoder, progress=_progress("training, clean"))
    degrader = training_degrader(plan.train)
    for copy in range(args.copies):
        pooled_rows(plan.train, cache, encoder, degrader=degrader, namespace="train", copy=copy,
                    progress=_progress(f"training, {TRAIN_PRESET} copy {copy}"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="pooled encoder states of the evaluation conditions and training copies")
    c.add_argument("--copies", type=int, default=2, help="degraded copies of each training clip")
    c.add_argument("--skip-train", action="store_true", help="only the evaluation conditions")
    for q in (c,):
        q.add_argument("--data", type=Path, default=DEFAULT_DATA)
        q.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    {"cache": cmd_cache}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

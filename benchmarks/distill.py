#!/usr/bin/env python
"""The `fast` model: a small network distilled from the default model (issue 15). Resumable at every step.

    python -m benchmarks.distill labels --out runs/distill/teacher_default.jsonl          # teacher soft labels
    python -m benchmarks.distill train --out runs/fast_kd --teacher-labels runs/distill/teacher_default.jsonl
    python -m benchmarks.distill train --out runs/fast_hard --distill-weight 0            # the same, true labels only
    python -m benchmarks.distill report runs/fast_kd runs/fast_hard --teacher default --json runs/distill/report.json

``labels`` writes the teacher's raw logits for every clip of RAVDESS, CREMA-D and nEMO (training and
validation speakers; the validation ones only to measure agreement) from the cached Whisper-base states
(``emovox.training.distillation``). ``train`` trains on the default model's split (``benchmarks.train_default.
per_corpus_plan``: ~10 % of each corpus's speakers held out, seed 0), so the figures compare with the
teacher's card. ``report`` prints the validation UAR overall and per corpus of each model and of the
teacher, and how often the students agree with the teacher.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from benchmarks.train_default import CORPORA, DEFAULT_DATA, per_corpus_plan


def all_rows(data: Path, labels: str, corpora=CORPORA):
    plan, _ = per_corpus_plan(data, labels, 0.1, 0, corpora)
    return plan.train + plan.val


def cmd_labels(args) -> int:
    rows = all_rows(args.data, args.labels)
    train_rows, copies = training_copies(args.data, args.labels, args.augment, args.copies)
    write_labels(args, [(None, rows)] + [(c, train_rows) for c in copies])
    return 0


def training_copies(data: Path, labels: str, spec: str, copies: int):
    """The default's training rows and the ``DegradedCopy`` objects ``emovox train --augment SPEC
    --augment-copies K`` makes of them (the same degrader, babble pool and seeds)."""
    from emovox.training.config import TrainConfig
    from emovox.training.multicondition import MultiCondition, training_degrader

    plan, _ = per_corpus_plan(data, labels, 0.1, 0)
    degrader, pool = training_degrader(TrainConfig(augment_spec=spec), plan.train)
    multi = MultiCondition(degrader, copies, spec, 0, pool)
    return plan.train, [multi.copy(c) for c in range(copies)]


def write_labels(args, versions) -> None:
    """The teacher's logits on every clip (``copy`` None) and on the training clips' degraded copies, for
    ``versions`` = [(copy, rows)]. A probe teacher reads pooled states from ``benchmarks.robustness``'s cache
    (the same clips, degradations and seeds, encoded there on ONNX Runtime); what is not cached there runs the
    teacher. Degraded copies are checked first: two copies' waveforms, encoded now, must give the cached state."""
    from benchmarks.robustness import setup
    from emovox.data.cache import content_key
    from emovox.degrade.multicondition import variant_name
    from emovox.training.distillation import Teacher, append_entry, entry_key, open_teacher_labels

    _, _, encoder, cache = setup(args.data)
    teacher = Teacher(args.teacher)
    probe = getattr(teacher.pipeline.model, "head_kind", None) == "mean"
    for copy, rows in versions[1:2]:
        for row in rows[:2]:
            cached = cache.get((str(row.path), variant_name(copy.degrader, copy.seed(row.path))))
            if cached is not None and not np.allclose(encoder.pooled(copy.load(row)), cached, atol=2e-2):
                sys.exit(f"{row.path}: the cached degraded copy {copy.copy} is not this degradation's (other seeds, "
                         "babble or spec); cache the copies with benchmarks.robustness first")
    have = open_teacher_labels(args.out, teacher)
    from_cache = computed = 0
    with open(args.out, "a", encoding="utf-8") as fh:
        for copy, rows in versions:
            for i, row in enumerate(rows, start=1):
                path = str(row.path)
                key, variant = content_key(path), None if copy is None else copy.variant(path)
                if entry_key(key, variant) in have.logits:
                    continue
                item = path if copy is None else (path, variant_name(copy.degrader, copy.seed(path)))
                pooled = cache.get(item) if probe else None
                if pooled is not None:
                    logits, from_cache = teacher.logits_from_pooled(np.asarray(pooled)[None])[0], from_cache + 1
                else:
                    logits, computed = teacher.logits(row, copy=copy), computed + 1
                append_entry(fh, have, key, variant, path, logits)
                if i % 1000 == 0:
                    fh.flush()
                    print(f"{'clean' if copy is None else f'copy {copy.copy}'}: {i}/{len(rows)} ({from_cache} from "
                          f"the pooled cache, {computed} run)", flush=True)
    print(f"{args.out}: {len(have.logits)} entries ({from_cache} from the pooled cache, {computed} run now)")


def cmd_train(args, argv) -> int:
    import torch

    from emovox.training.config import TrainConfig
    from emovox.training.run import train_model

    torch.set_num_threads(args.threads)
    plan, labels = per_corpus_plan(args.data, args.labels, 0.1, args.seed)
    print(f"{len(plan.train)} training clips, {len(plan.val)} validation clips; {plan.message}", flush=True)
    distil = args.distill_weight > 0
    cfg = TrainConfig(model=args.model, model_kwargs=args.model_options, features=args.features, labels=args.labels,
                      epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, lr_schedule="cosine",
                      warmup_epochs=1.0, early_stopping_patience=args.patience, seed=args.seed, augment=True,
                      mixup_alpha=args.mixup, crop_s=args.crop_s,
                      teacher=args.teacher if distil else None,
                      teacher_labels=str(args.teacher_labels) if distil and args.teacher_labels else None,
                      distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
                      augment_spec=args.augment, augment_copies=args.augment_copies)
    command = "python -m benchmarks.distill " + " ".join(shlex.quote(a) for a in argv)
    meta = {"command": command, "corpora": list(CORPORA), "data_dirs": [str(args.data / c) for c in CORPORA]}
    res = train_model(plan, labels, cfg, args.out, cache=True, resume=args.resume, meta=meta,
                      echo=lambda s: print(f"  {s}", flush=True))
    print(f"validation UAR {100 * res.metrics['uar']:.1f}", flush=True)
    return 0


def _val_logits(model_dir: str, rows) -> np.ndarray:
    """Calibrated log-probabilities of a model on the rows (its argmax is the model's answer)."""
    import emovox

    model = emovox.load_model(model_dir)
    waves = [model.load(r.path) for r in rows]
    return np.log(np.clip(model.probabilities(waves), 1e-12, 1.0))


def _teacher_val_logits(teacher: str, rows, labels_file: Path | None = None) -> np.ndarray:
    """The teacher's logits on the validation clips: from a teacher-labels file written by ``labels`` (which
    holds every clip's), else the teacher run now."""
    from emovox.training.distillation import Teacher, TeacherLabels

    if labels_file is not None:
        return TeacherLabels.read(labels_file).lookup([str(r.path) for r in rows])
    t = Teacher(teacher)
    return np.stack([t.logits(str(r.path)) for r in rows])


def uar_table(logits: np.ndarray, rows, labels: list[str]) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    y = np.array([labels.index(r.label) for r in rows])
    pred = logits.argmax(1)
    out = {"overall": {"clips": len(rows), "uar": float(balanced_accuracy_score(y, pred)),
                       "accuracy": float(np.mean(y == pred))}}
    for corpus in CORPORA:
        m = np.array([r.corpus == corpus for r in rows])
        if m.any():
            out[corpus] = {"clips": int(m.sum()), "speakers": len({r.speaker for r, k in zip(rows, m) if k}),
                           "uar": float(balanced_accuracy_score(y[m], pred[m])),
                           "accuracy": float(np.mean(y[m] == pred[m]))}
    return out


def speed_lines(res: dict) -> str:
    """Markdown lines of ``speed_benchmark.py --fast M --json F``'s results."""
    f = res["fast"]
    ip, wp = f["in_process"], f["whole_process"]
    command = "python " + " ".join(res["command"].split()[1:])
    return (f"Throughput (`{command}`; {f['clips']} RAVDESS clips written as 48 kHz 16-bit WAV, "
            f"{f['clip_seconds_mean']:.1f} s mean, {ip['threads']} threads, batches of {ip['batch_size']}, on a shared "
            f"2-core VM, other tenants' jobs running):\n\n"
            "| pipeline | clips/s |\n|---|---|\n"
            f"| decode + resample to 16 kHz only (`load_audio`) | {ip['decode_resample_only']['clips_per_s']:.0f} |\n"
            f"| in process, ONNX Runtime, decode + resample + features + model | {ip['onnxruntime']['clips_per_s']:.0f} |\n"
            f"| in process, PyTorch, decode + resample + features + model | {ip['torch']['clips_per_s']:.0f} |\n"
            f"| `emovox classify --model fast FOLDER`, whole process | {wp['emovox_classify_clips_per_s']:.1f} |\n"
            f"| openSMILE eGeMAPSv02 functionals, 2 processes, whole process | {wp['egemaps_2proc_clips_per_s']:.1f} |\n"
            f"\n`emovox classify --model fast FOLDER` took {min(wp['emovox_classify_seconds']):.1f}–"
            f"{max(wp['emovox_classify_seconds']):.1f} s against {wp['egemaps_2proc_seconds']:.1f} s for eGeMAPS: "
            f"{wp['ratio']:.1f}× faster.\n")


def cmd_report(args) -> int:
    plan, labels = per_corpus_plan(args.data, args.labels, 0.1, args.seed)
    rows = plan.val
    print(f"{len(rows)} validation clips; {plan.val_message}", flush=True)
    results = {}
    teacher = _teacher_val_logits(args.teacher, rows, args.teacher_labels)
    results[f"teacher ({args.teacher})"] = uar_table(teacher, rows, labels)
    for m in args.models:
        logits = _val_logits(m, rows)
        r = uar_table(logits, rows, labels)
        r["agreement_with_teacher"] = float(np.mean(logits.argmax(1) == teacher.argmax(1)))
        results[m] = r
    table = ["| model | overall UAR | accuracy | " + " | ".join(f"{c} UAR" for c in CORPORA)
             + " | same answer as the teacher |", "|---|---|---|" + "---|" * len(CORPORA) + "---|"]
    for name, r in results.items():
        agree = r.get("agreement_with_teacher")
        table.append(f"| {name} | {100 * r['overall']['uar']:.1f} | {100 * r['overall']['accuracy']:.1f} | "
                     + " | ".join(f"{100 * r[c]['uar']:.1f}" for c in CORPORA if c in r)
                     + f" | {'–' if agree is None else f'{100 * agree:.1f} %'} |")
    print("\n".join(table))
    if args.notes:
        args.notes.parent.mkdir(parents=True, exist_ok=True)
        text = (f"On the {len(rows)} validation clips ({plan.val_message}; argmax over all seven labels, UAR over the "
                "classes each corpus has):\n\n" + "\n".join(table) + "\n")
        if args.speed:
            text += "\n" + speed_lines(json.loads(args.speed.read_text()))
        args.notes.write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": "python -m benchmarks.distill " + " ".join(sys.argv[1:]),
                                         "validation": plan.val_message, "results": results}, indent=1))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--labels", default="ekman7")
    p.add_argument("--seed", type=int, default=0)
    sub = p.add_subparsers(dest="cmd", required=True)
    lab = sub.add_parser("labels", help="the teacher's soft labels for every clip (resumable)")
    lab.add_argument("--teacher", default="default")
    lab.add_argument("--out", type=Path, required=True)
    lab.add_argument("--augment", default="real-world", help="with --copies: the degradation of the copies")
    lab.add_argument("--copies", type=int, default=0, help="also label this many degraded copies of each training clip")
    tr = sub.add_parser("train", help="train a student on the default model's split")
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--model", default="fast")
    tr.add_argument("--model-options", dest="model_options", type=json.loads, default={})
    tr.add_argument("--features", default="logmel64h20")
    tr.add_argument("--teacher", default=None, help="compute missing teacher labels with this model")
    tr.add_argument("--teacher-labels", dest="teacher_labels", type=Path, default=None)
    tr.add_argument("--distill-weight", dest="distill_weight", type=float, default=0.7)
    tr.add_argument("--distill-temperature", dest="distill_temperature", type=float, default=2.0)
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--patience", type=int, default=8)
    tr.add_argument("--lr", type=float, default=3e-3)
    tr.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    tr.add_argument("--mixup", type=float, default=0.0)
    tr.add_argument("--crop-s", dest="crop_s", type=float, default=3.0)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--augment", default=None, help="multi-condition training: this degradation spec's copies")
    tr.add_argument("--augment-copies", dest="augment_copies", type=int, default=None)
    tr.add_argument("--resume", action="store_true")
    rep = sub.add_parser("report", help="validation UAR overall and per corpus, next to the teacher")
    rep.add_argument("models", nargs="+")
    rep.add_argument("--teacher", default="default")
    rep.add_argument("--teacher-labels", dest="teacher_labels", type=Path, default=None,
                     help="the teacher's logits from this labels file (written by 'labels') instead of running it")
    rep.add_argument("--json", type=Path, default=None)
    rep.add_argument("--notes", type=Path, default=None, help="write the table as Markdown here (for a model card)")
    rep.add_argument("--speed", type=Path, default=None, help="speed_benchmark.py --fast --json output, added to --notes")
    args = p.parse_args(argv)
    if args.cmd == "labels":
        return cmd_labels(args)
    if args.cmd == "train":
        return cmd_train(args, argv)
    return cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Speaker-independent speech-emotion benchmark: emovox's model families against eGeMAPS + SVM.

Protocols (on ../shared/data, see benchmarks/README.md):

- ``ravdess8``: RAVDESS speech, 8 classes, 5 folds by actor;
- ``crema6``: CREMA-D, 6 classes, 5 folds by actor;
- ``ravdess_to_crema``: train on RAVDESS, test on CREMA-D, 4 classes (``core4``: neutral, happy,
  sad, angry; RAVDESS calm counts as neutral);
- ``crema_to_ravdess``: the reverse;
- ``ravdess_out``, ``crema_out``, ``nemo_out`` (optional): one corpus held out, train on the other two with
  ``ekman7`` labels (20 % of their speakers for validation), test on every clip of the held-out corpus; UAR
  over the classes it has, predictions over all seven.

Every family trains on the same folds; its validation split (for early stopping and
calibration) is a speaker-independent part of the training fold. The peer, openSMILE eGeMAPSv02
functionals with an RBF SVM (standardised features, balanced class weights, C chosen by an
inner speaker-grouped cross-validation on the training fold only), is measured on the same folds in
the same run. Writes ``results.json`` (every fold) and ``results.md`` (a table for BENCHMARKS.md).

    python -m benchmarks.speech_benchmark --quick                 # minutes: 1 fold, 2 epochs, subsets
    python -m benchmarks.speech_benchmark --out runs/bench        # the full benchmark (hours on a CPU)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.common import DEFAULT_DATA, machine

FAMILIES = ["cnn", "cnn2d", "lstm", "crnn", "egemaps_svm"]
#: Families that can be asked for but are not run by default (``ssl`` needs ``--ssl-backbone``).
OPTIONAL_FAMILIES = ["ssl"]
PROTOCOLS = ["ravdess8", "crema6", "ravdess_to_crema", "crema_to_ravdess"]
#: Each corpus held out in turn: train on the other two (ekman7), test on all of the held-out one.
HELD_OUT = {"ravdess_out": "ravdess", "crema_out": "crema-d", "nemo_out": "nemo"}
OPTIONAL_PROTOCOLS = list(HELD_OUT)
#: Training settings per family (learning rate, mixup); everything else is TrainConfig's default
#: with augmentation on, a cosine schedule and early stopping on validation UAR.
FAMILY_SETTINGS = {
    "cnn": {"lr": 3e-3, "mixup_alpha": 0.2},
    "cnn2d": {"lr": 3e-3, "mixup_alpha": 0.2},
    "crnn": {"lr": 3e-3, "mixup_alpha": 0.2},
    "lstm": {"lr": 2e-3, "mixup_alpha": 0.0},
    "ssl": {"lr": 1e-3, "mixup_alpha": 0.0},
}
SVM_C_GRID = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding ravdess/ and crema-d/")
    p.add_argument("--families", default=",".join(FAMILIES),
                   help="comma-separated: " + ", ".join(FAMILIES + OPTIONAL_FAMILIES))
    p.add_argument("--ssl-backbone", dest="ssl_backbone", default=None,
                   help="pretrained backbone (Hugging Face id or local folder) for the optional ssl family")
    p.add_argument("--ssl-head", dest="ssl_head", default="mean",
                   help="head of the ssl family: mean (a linear probe on layer means, C chosen on the validation "
                        "speakers; the default model's), attention or cnn")
    p.add_argument("--label-scope", dest="label_scope", default="all", choices=["all", "corpus"],
                   help="multi-corpus training: loss over all labels, or over each clip's own corpus's labels")
    p.add_argument("--protocols", default=",".join(PROTOCOLS),
                   help="comma-separated: " + ", ".join(PROTOCOLS + OPTIONAL_PROTOCOLS))
    p.add_argument("--folds", type=int, default=5, help="speaker folds for within-corpus protocols")
    p.add_argument("--run-folds", type=int, default=None, help="run only the first N folds (default: all)")
    p.add_argument("--model-kwargs", dest="model_kwargs", type=json.loads, default=None,
                   help="JSON settings for the neural families' models, e.g. '{\"input_norm\": \"utterance\"}'")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--patience", type=int, default=12, help="early-stopping patience (epochs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=None,
                   help="AdamW weight decay (default: TrainConfig's)")
    p.add_argument("--limit", type=int, default=None, help="use at most N clips per corpus (stratified by speaker and label)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/speech_benchmark"))
    p.add_argument("--cache-dir", default=None, help="feature cache (default: $EMOVOX_CACHE_DIR or ~/.cache/emovox/features)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)")
    p.add_argument("--workers", type=int, default=None, help="threads for decoding/feature extraction")
    p.add_argument("--force", action="store_true", help="retrain folds whose results already exist in --out")
    p.add_argument("--adapt", action="store_true",
                   help="ssl probe heads on cross-corpus protocols: also score the model adapted (emovox adapt) to the "
                        "test corpus's audio, without its labels")
    p.add_argument("--quick", action="store_true",
                   help="smoke run in minutes: 1 fold, 2 epochs, at most 160 RAVDESS / 240 CREMA-D clips")
    args = p.parse_args(argv)
    if args.quick:
        args.run_folds = 1
        args.epochs = min(args.epochs, 2)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    args.protocols = [x.strip() for x in args.protocols.split(",") if x.strip()]
    for f in args.families:
        if f not in FAMILIES + OPTIONAL_FAMILIES:
            p.error(f"unknown family {f!r}; choose from {', '.join(FAMILIES + OPTIONAL_FAMILIES)}")
    if "ssl" in args.families and not args.ssl_backbone:
        p.error("the ssl family needs --ssl-backbone (a Hugging Face id or a local checkpoint folder)")
    for x in args.protocols:
        if x not in PROTOCOLS + OPTIONAL_PROTOCOLS:
            p.error(f"unknown protocol {x!r}; choose from {', '.join(PROTOCOLS + OPTIONAL_PROTOCOLS)}")
    return args


# ---------------------------------------------------------------------------------------------
# Data


def subsample(rows, limit: int | None, seed: int):
    """At most ``limit`` rows, keeping every speaker and label as evenly as possible (deterministic)."""
    if not limit or len(rows) <= limit:
        return list(rows)
    rng = np.random.default_rng(seed)
    groups = defaultdict(list)
    for r in rows:
        groups[(r.speaker, r.label)].append(r)
    keys = sorted(groups)
    for k in keys:
        rng.shuffle(groups[k])
    out, i = [], 0
    while len(out) < limit:
        progressed = False
        for k in keys:
            if i < len(groups[k]) and len(out) < limit:
                out.append(groups[k][i])
                progressed = True
        if not progressed:
            break
        i += 1
    return sorted(out, key=lambda r: r.path)


def load_corpus(args, name: str):
    from emovox.data.corpora import scan

    folder = {"ravdess": "ravdess", "crema-d": "crema-d", "nemo": "nemo"}[name]
    rows = scan(args.data / folder, name, with_duration=False)
    limit = args.limit
    if args.quick:
        cap = 160 if name == "ravdess" else 240
        limit = min(limit, cap) if limit else cap
    return subsample(rows, limit, args.seed)


def protocol_plans(args, protocol: str, corpora: dict):
    """(labels, [SplitPlan, ...], description) for a protocol."""
    from emovox.data.splits import train_val_split
    from emovox.training.config import TrainConfig
    from emovox.training.plan import SplitPlan, map_labels, plan_splits

    if protocol in ("ravdess8", "crema6"):
        rows = corpora["ravdess" if protocol == "ravdess8" else "crema-d"]
        kept, labels, dropped, _ = map_labels(rows, "ravdess8" if protocol == "ravdess8" else "crema6")
        plans = plan_splits(kept, TrainConfig(folds=args.folds, seed=args.seed))
        if args.run_folds:
            plans = plans[: args.run_folds]
        return labels, plans, f"{len(kept)} clips, {args.folds} speaker folds"
    if protocol in HELD_OUT:
        return held_out_plan(args, protocol, corpora)
    src, dst = ("ravdess", "crema-d") if protocol == "ravdess_to_crema" else ("crema-d", "ravdess")
    train_rows, labels, _, _ = map_labels(corpora[src], "core4")
    test_rows, test_labels, dropped, _ = map_labels(corpora[dst], "core4")
    assert test_labels == labels, (labels, test_labels)
    tv = train_val_split(train_rows, 0.2, seed=args.seed)
    plan = SplitPlan(train=[train_rows[i] for i in tv.train], val=[train_rows[i] for i in tv.val], test=test_rows,
                     kind="speaker", message=f"cross-corpus: train {src}, test {dst} (core4)",
                     val_message=tv.message, val_speakers=list(tv.test_speakers), name="cross")
    return labels, [plan], f"train {len(train_rows)} {src} clips, test {len(test_rows)} {dst} clips (core4)"


def held_out_plan(args, protocol: str, corpora: dict):
    from emovox.data.splits import train_val_split
    from emovox.training.plan import SplitPlan, map_labels

    test_name = HELD_OUT[protocol]
    train_names = [n for n in sorted(corpora) if n != test_name]
    train_rows, labels, _, _ = map_labels([r for n in train_names for r in corpora[n]], "ekman7")
    test_rows, _, _, _ = map_labels(corpora[test_name], "ekman7")
    tv = train_val_split(train_rows, 0.2, seed=args.seed)
    plan = SplitPlan(train=[train_rows[i] for i in tv.train], val=[train_rows[i] for i in tv.val], test=test_rows,
                     kind="speaker", message=f"held out: train {' + '.join(train_names)}, test {test_name} (ekman7)",
                     val_message=tv.message, val_speakers=list(tv.test_speakers), name="held_out")
    present = sorted({r.label for r in test_rows}, key=labels.index)
    return labels, [plan], (f"train {len(train_rows)} clips of {' + '.join(train_names)}, test {len(test_rows)} "
                            f"{test_name} clips (ekman7; its classes: {', '.join(present)})")


# ---------------------------------------------------------------------------------------------
# eGeMAPS + SVM


def egemaps_features(rows, cache_root: Path, workers: int) -> np.ndarray:
    """eGeMAPSv02 functionals (88 per clip) of the 16 kHz mono audio emovox decodes, cached per clip."""
    import opensmile

    from emovox.audio import load_audio

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)
    folder = cache_root / "egemaps_v02"
    folder.mkdir(parents=True, exist_ok=True)

    def one(row):
        st = os.stat(row.path)
        key = hashlib.sha1(f"{os.path.abspath(row.path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
        f = folder / f"{key}.npy"
        if f.exists():
            return np.load(f)
        x = load_audio(row.path)
        v = smile.process_signal(x, 16000).to_numpy(dtype=np.float64)[0]
        tmp = folder / f".{key}.{os.getpid()}.tmp.npy"
        np.save(tmp, v)
        os.replace(tmp, f)
        return v

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        return np.stack(list(ex.map(one, rows)))


def run_svm(plan, labels, feats: dict, seed: int) -> dict:
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from emovox.training.evaluation import compute_metrics

    train = plan.train + plan.val  # the SVM picks C by its own inner CV, so it gets the validation clips too
    x_tr = np.stack([feats[r.path] for r in train])
    y_tr = np.array([labels.index(r.label) for r in train])
    groups = np.array([r.speaker for r in train])
    x_te = np.stack([feats[r.path] for r in plan.test])
    y_te = np.array([labels.index(r.label) for r in plan.test])
    t = time.perf_counter()
    n_groups = len(set(groups))
    pipe = make_pipeline(StandardScaler(), SVC(kernel="rbf", gamma="scale", class_weight="balanced"))
    search = GridSearchCV(pipe, {"svc__C": SVM_C_GRID}, scoring="balanced_accuracy",
                          cv=GroupKFold(n_splits=min(4, n_groups)), n_jobs=1)
    search.fit(x_tr, y_tr, groups=groups)
    fit_s = time.perf_counter() - t
    m = compute_metrics(y_te, search.predict(x_te), labels)
    sv = search.best_estimator_[-1]
    n_params = int(sv.support_vectors_.size + sv.dual_coef_.size + sv.intercept_.size + 2 * x_tr.shape[1])
    return {"uar": m["uar"], "macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "n_test": m["n"],
            "training_time_s": fit_s, "parameters": n_params, "size_bytes": n_params * 8,
            "best_C": float(search.best_params_["svc__C"])}


# ---------------------------------------------------------------------------------------------
# Neural families


def run_family(args, family: str, plan, labels, out_dir: Path, cache) -> dict:
    from emovox.atomic import write_json
    from emovox.training.config import TrainConfig
    from emovox.training.run import train_model

    result_file = out_dir / "result.json"
    if result_file.exists() and not args.force:
        out = json.loads(result_file.read_text())
        if args.adapt and "uar_adapted" not in out and adapts(family, plan):
            out.update(adapted_figures(plan, out_dir, cache))
            write_json(result_file, out)
        return out
    kwargs = dict(args.model_kwargs or {})
    if family == "ssl":
        kwargs = {"backbone": args.ssl_backbone, "head": args.ssl_head, **kwargs}
    scope = {"label_scope": args.label_scope} if args.label_scope != "all" else {}
    if args.weight_decay is not None:
        scope["weight_decay"] = args.weight_decay
    cfg = TrainConfig(model=family, epochs=args.epochs, batch_size=args.batch_size, lr_schedule="cosine",
                      warmup_epochs=2.0 if args.epochs > 10 else 0.5, augment=family != "ssl",  # ssl: cached states
                      early_stopping_patience=args.patience, seed=args.seed, num_workers=args.workers,
                      model_kwargs=kwargs, **scope, **FAMILY_SETTINGS[family])
    res = train_model(plan, labels, cfg, out_dir, cache=cache, echo=lambda s: print(f"    {s}", flush=True))
    out = {"uar": res.metrics["uar"], "macro_f1": res.metrics["macro_f1"], "accuracy": res.metrics["accuracy"],
           "n_test": res.metrics["n"], "training_time_s": res.training_time_s,
           "parameters": res.meta["parameters"], "size_bytes": res.meta["size_bytes"],
           "best_epoch": res.best_epoch, "epochs_run": len(res.history), "ece": res.metrics["ece"],
           "ece_calibrated": res.metrics["ece_calibrated"]}
    if args.adapt and adapts(family, plan):
        out.update(adapted_figures(plan, out_dir, cache))
    write_json(result_file, out)
    return out


def adapts(family: str, plan) -> bool:
    """``--adapt`` applies to probe-head ssl models tested on corpora they were not trained on."""
    return family == "ssl" and not {r.corpus for r in plan.test} & {r.corpus for r in plan.train + plan.val}


def adapted_figures(plan, out_dir: Path, cache) -> dict:
    """The model as trained and adapted (``emovox adapt``) to the test clips' audio, without their labels,
    both scored by ``emovox evaluate`` (argmax over the labels the test corpus has)."""
    import shutil

    from emovox.modelio import load_model_dir
    from emovox.training.adaptation import adapt_model
    from emovox.training.evaluation import evaluate_model

    adapted = out_dir / "adapted"
    shutil.rmtree(adapted, ignore_errors=True)
    t = time.perf_counter()
    adapt_model(out_dir, [r.path for r in plan.test], adapted, cache=cache)
    before = evaluate_model(load_model_dir(out_dir), plan.test, cache=cache).metrics
    after = evaluate_model(load_model_dir(adapted), plan.test, cache=cache).metrics
    print(f"    adapted to the test corpus's audio: UAR {100 * before['uar']:.1f} -> {100 * after['uar']:.1f} "
          f"(emovox evaluate; {time.perf_counter() - t:.0f} s)", flush=True)
    return {"uar_evaluate": before["uar"], "uar_adapted": after["uar"], "macro_f1_adapted": after["macro_f1"],
            "accuracy_adapted": after["accuracy"]}


# ---------------------------------------------------------------------------------------------
# Report


def summarize(folds: list[dict]) -> dict:
    out = {}
    for key in ("uar", "macro_f1", "accuracy", "training_time_s", "parameters", "size_bytes", "uar_evaluate",
                "uar_adapted"):
        vals = [f[key] for f in folds if key in f]
        out[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)} if vals else None
    return out


def markdown(results: dict, meta: dict) -> str:
    def pm(s):
        return common.pm(*((s["mean"], s["std"]) if s else (None,)))

    lines = [f"### Speech emotion, speaker-independent ({meta['date']})", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
             f"torch {meta['machine']['torch']} ({meta['machine']['torch_threads']} threads), "
             f"Python {meta['machine']['python']}", ""]
    lines += ["| protocol | family | UAR % | macro-F1 % | accuracy % | folds | train time / fold (s) | parameters | size |",
              "|---|---|---|---|---|---|---|---|---|"]
    for protocol, fams in results.items():
        for family, r in fams["families"].items():
            s = r["summary"]
            size = s["size_bytes"]["mean"] if s["size_bytes"] else 0
            lines.append(
                f"| {protocol} | {family} | {pm(s['uar'])} | {pm(s['macro_f1'])} | {pm(s['accuracy'])} | "
                f"{s['uar']['n']} | {s['training_time_s']['mean']:.0f} | {int(s['parameters']['mean']):,} | "
                f"{size / 1024:.0f} KiB |")
    lines += ["", "UAR: mean of per-class recalls; ± is the standard deviation over folds. "
              "eGeMAPS + SVM: openSMILE eGeMAPSv02 functionals, standardised, RBF SVM with balanced class weights, "
              "C by speaker-grouped inner CV on the training fold; its 'parameters' are its support-vector values.", ""]
    for protocol, fams in results.items():
        lines.append(f"- {protocol}: {fams['description']}")
        for family, r in fams["families"].items():
            s = r["summary"]
            if s.get("uar_adapted"):
                lines.append(f"  - {family} adapted to the test corpus's unlabelled audio (`emovox adapt`): UAR "
                             f"{pm(s['uar_evaluate'])} -> {pm(s['uar_adapted'])} (both by `emovox evaluate`: argmax "
                             f"over the labels the test corpus has)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from emovox.atomic import write_json
    from emovox.data.cache import default_cache_dir

    cache_root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    workers = args.workers or min(4, os.cpu_count() or 1)
    args.out.mkdir(parents=True, exist_ok=True)
    needed = set()
    for p in args.protocols:
        needed |= ({"ravdess"} if p == "ravdess8" else {"crema-d"} if p == "crema6"
                   else {"ravdess", "crema-d", "nemo"} if p in HELD_OUT else {"ravdess", "crema-d"})
    corpora = {name: load_corpus(args, name) for name in sorted(needed)}
    for name, rows in corpora.items():
        print(f"{name}: {len(rows)} clips, {len({r.speaker for r in rows})} speakers, "
              + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r.label for r in rows).items())), flush=True)
    egemaps = {}
    if "egemaps_svm" in args.families:
        t = time.perf_counter()
        for rows in corpora.values():
            egemaps.update({r.path: v for r, v in zip(rows, egemaps_features(rows, cache_root, workers))})
        print(f"eGeMAPS features: {len(egemaps)} clips in {time.perf_counter() - t:.0f} s", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
            "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "family_settings": FAMILY_SETTINGS, "svm_c_grid": SVM_C_GRID}
    results = {}
    t0 = time.perf_counter()
    for protocol in args.protocols:
        labels, plans, desc = protocol_plans(args, protocol, corpora)
        print(f"== {protocol}: {desc}; labels {', '.join(labels)}", flush=True)
        results[protocol] = {"description": desc, "labels": labels, "families": {}}
        for family in args.families:
            folds = []
            for plan in plans:
                print(f"  {family} {plan.name}: {plan.message}", flush=True)
                if family == "egemaps_svm":
                    r = run_svm(plan, labels, egemaps, args.seed)
                else:
                    r = run_family(args, family, plan, labels, args.out / protocol / family / plan.name, cache_root)
                r["fold"] = plan.name
                r["test_speakers"] = plan.test_speakers
                print(f"  {family} {plan.name}: UAR {100 * r['uar']:.1f}, macro-F1 {100 * r['macro_f1']:.1f}, "
                      f"accuracy {100 * r['accuracy']:.1f}, {r['training_time_s']:.0f} s", flush=True)
                folds.append(r)
            results[protocol]["families"][family] = {"folds": folds, "summary": summarize(folds)}
            write_json(args.out / "results.json", {"meta": meta, "results": results})
    meta["total_time_s"] = time.perf_counter() - t0
    write_json(args.out / "results.json", {"meta": meta, "results": results})
    md = markdown(results, meta)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

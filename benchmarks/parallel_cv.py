"""Speaker-independent accuracy benchmark, run as parallel ``emovox train`` / ``emovox evaluate`` jobs.

Every number comes from emovox's own CLI, so it measures exactly what users run. Protocols:

- ``ravdess``: RAVDESS 8 classes, 5 folds by actor (one model per fold; validation speakers for
  early stopping come from the training actors only);
- ``crema``: CREMA-D 6 classes, 5 folds by actor;
- ``cross``: train on one corpus with ``core4`` labels (validation speakers held out of it), test
  on the other corpus (RAVDESS → CREMA-D and CREMA-D → RAVDESS);
- ``final``: the shipped models: ``ekman7`` on RAVDESS + CREMA-D together.

Hyper-parameters are fixed in advance (below) for every protocol: nothing is tuned on test folds.

    python -m benchmarks.parallel_cv --data-root ../shared/data --out bench_out --jobs 8 \
        --protocols ravdess crema cross --families cnn cnn2d lstm crnn
    python -m benchmarks.parallel_cv --summarize bench_out        # table from finished runs

Runs on CPU or GPU (``--device``); ``--jobs`` processes at a time, each with ``--threads`` torch
threads. Finished runs are skipped on a re-run, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import DEFAULT_DATA, REPO, mean_std, pm

FAMILIES = ["cnn", "cnn2d", "lstm", "crnn"]
#: Fixed per-family settings (chosen before any test fold was seen).
FAMILY_ARGS = {
    "cnn": ["--lr", "0.003", "--use_augmentation", "--mixup", "0.2"],
    "cnn2d": ["--lr", "0.003", "--use_augmentation", "--mixup", "0.2"],
    "crnn": ["--lr", "0.003", "--use_augmentation", "--mixup", "0.2"],
    "lstm": ["--lr", "0.002", "--use_augmentation"],
}
COMMON = ["--lr-schedule", "cosine", "--early_stopping_patience", "10", "--batch_size", "32", "--val_split", "0.2",
          "--seed", "0", "--no-progress"]


def jobs_for(protocol: str, family: str, root: Path, out: Path, epochs: int, folds: int) -> list[dict]:
    rav, cre = str(root / "ravdess"), str(root / "crema-d")
    base = ["train", "--model", family, "--epochs", str(epochs), *COMMON, *FAMILY_ARGS[family]]
    jobs = []
    if protocol in ("ravdess", "crema"):
        data, labels = (rav, "ravdess8") if protocol == "ravdess" else (cre, "crema6")
        for k in range(1, folds + 1):
            d = out / protocol / family / f"fold{k}"
            jobs.append({"name": f"{protocol}/{family}/fold{k}", "out": d, "result": d / f"fold_{k}",
                         "cmd": [*base, "--data_dir", data, "--labels", labels, "--folds", str(folds),
                                 "--fold", str(k), "--output_dir", str(d)]})
    elif protocol == "cross":
        for src, dst, tag in ((rav, cre, "ravdess_to_crema"), (cre, rav, "crema_to_ravdess")):
            d = out / "cross" / tag / family
            jobs.append({"name": f"cross/{tag}/{family}", "out": d,
                         "cmd": [*base, "--data_dir", src, "--labels", "core4", "--output_dir", str(d)],
                         "then": ["evaluate", "--model", str(d), dst, "--output-dir", str(d / "cross_eval")]})
    elif protocol == "final":
        d = out / "final" / family
        jobs.append({"name": f"final/{family}", "out": d,
                     "cmd": [*base, "--data_dir", rav, cre, "--labels", "ekman7", "--output_dir", str(d)]})
    else:
        raise SystemExit(f"unknown protocol {protocol!r}")
    return jobs


def run_job(job: dict, extra: list[str], env: dict) -> dict:
    out: Path = job["out"]
    done = job.get("result", out) / "metrics_overall.json"
    then_done = out / "cross_eval" / "metrics_overall.json"
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    status = "skipped (done)"
    with open(log, "a") as fh:
        if not done.exists():
            rc = subprocess.call([sys.executable, "-m", "emovox.cli", *job["cmd"], *extra], stdout=fh,
                                 stderr=subprocess.STDOUT, env=env)
            status = "ok" if rc == 0 else f"failed rc={rc}"
        if job.get("then") and done.exists() and not then_done.exists():
            rc = subprocess.call([sys.executable, "-m", "emovox.cli", *job["then"]], stdout=fh,
                                 stderr=subprocess.STDOUT, env=env)
            status += "" if rc == 0 else f"; evaluate failed rc={rc}"
    print(f"[{time.strftime('%H:%M:%S')}] {job['name']}: {status} ({time.time() - t0:.0f} s)", flush=True)
    return {"name": job["name"], "status": status, "seconds": time.time() - t0}


def _load(p: Path) -> dict | None:
    return json.loads(p.read_text()) if p.exists() else None


def summarize(out: Path) -> dict:
    res: dict = {}
    for protocol in ("ravdess", "crema"):
        for fam_dir in sorted((out / protocol).glob("*")):
            folds = sorted(fam_dir.glob("fold*/fold_*/metrics_overall.json"))
            ms = [json.loads(p.read_text()) for p in folds]
            metas = [_load(p.parent / "model_meta.json") or {} for p in folds]
            if not ms:
                continue
            row = {"folds": len(ms)}
            for key in ("uar", "macro_f1", "accuracy"):
                row[key] = mean_std([m[key] for m in ms])
            row["train_time_s"] = mean_std([m.get("training_time_s", 0.0) for m in ms])[0]
            row["params"] = metas[0].get("parameters")
            row["size_bytes"] = metas[0].get("size_bytes")
            row["ece"] = mean_std([m.get("ece", float("nan")) for m in ms])[0]
            row["ece_calibrated"] = mean_std([m.get("ece_calibrated", float("nan")) for m in ms])[0]
            res.setdefault(protocol, {})[fam_dir.name] = row
    for tag_dir in sorted((out / "cross").glob("*")):
        for fam_dir in sorted(tag_dir.glob("*")):
            m = _load(fam_dir / "cross_eval" / "metrics_overall.json")
            if m:
                res.setdefault("cross", {}).setdefault(tag_dir.name, {})[fam_dir.name] = {
                    k: m.get(k) for k in ("uar", "macro_f1", "accuracy", "n_clips", "n_dropped", "labels")}
    for fam_dir in sorted((out / "final").glob("*")):
        m, meta = _load(fam_dir / "metrics_overall.json"), _load(fam_dir / "model_meta.json")
        if m:
            res.setdefault("final", {})[fam_dir.name] = {"val_uar": m["uar"], "val_accuracy": m["accuracy"],
                                                         "ece": m.get("ece"), "ece_calibrated": m.get("ece_calibrated"),
                                                         "temperature": m.get("temperature"),
                                                         "params": (meta or {}).get("parameters")}
    peer = _load(out / "peer_egemaps_svm.json")
    if peer:
        res["peer"] = peer
    return res


def run_peer(out: Path, root: Path, folds: int, protocols: list[str]) -> None:
    """The eGeMAPS+SVM peer on the same speaker folds (``speech_benchmark.py``, which uses emovox's
    own ``plan_splits``, as ``emovox train --folds N --fold K`` does), saved as ``peer_egemaps_svm.json``."""
    names = {"ravdess": ["ravdess8"], "crema": ["crema6"], "cross": ["ravdess_to_crema", "crema_to_ravdess"]}
    wanted = [p for proto in protocols for p in names.get(proto, [])]
    if not wanted:
        return
    peer_out = out / "peer"
    cmd = [sys.executable, "-m", "benchmarks.speech_benchmark", "--data", str(root),
           "--families", "egemaps_svm", "--protocols", ",".join(wanted), "--folds", str(folds), "--out", str(peer_out)]
    rc = subprocess.call(cmd, cwd=REPO)
    if rc != 0:
        print(f"peer failed (rc={rc}): {' '.join(cmd)}", flush=True)
        return
    peer = peer_summary(json.loads((peer_out / "results.json").read_text())["results"])
    (out / "peer_egemaps_svm.json").write_text(json.dumps(peer, indent=1))


def peer_summary(results: dict) -> dict:
    """``speech_benchmark.py``'s egemaps_svm results in this script's table format."""
    peer: dict = {}
    for proto, key in (("ravdess8", "ravdess"), ("crema6", "crema")):
        if proto in results:
            fs = results[proto]["families"]["egemaps_svm"]["folds"]
            peer[key] = {k: mean_std([f[k] for f in fs]) for k in ("uar", "macro_f1", "accuracy")}
            peer[key]["train_time_s"] = mean_std([f["training_time_s"] for f in fs])[0]
    cross = {p: results[p]["families"]["egemaps_svm"]["folds"][0]["uar"]
             for p in ("ravdess_to_crema", "crema_to_ravdess") if p in results}
    if len(cross) == 2:
        peer["cross"] = cross
    return peer


def _pm(r: dict, key: str) -> str:
    return pm(*r[key])


def markdown(res: dict) -> str:
    lines = []
    names = {"ravdess": "RAVDESS, 8 classes, 5 folds by actor", "crema": "CREMA-D, 6 classes, 5 folds by actor"}
    for protocol in ("ravdess", "crema"):
        if protocol not in res and protocol not in res.get("peer", {}):
            continue
        lines += [f"### {names[protocol]}", "",
                  "| model | UAR | macro-F1 | accuracy | train time / fold | parameters | size |",
                  "|---|---|---|---|---|---|---|"]
        for fam, r in res.get(protocol, {}).items():
            lines.append(f"| {fam} | {_pm(r, 'uar')} | {_pm(r, 'macro_f1')} | {_pm(r, 'accuracy')} | {r['train_time_s']:.0f} s | "
                         f"{r['params']:,} | {r['size_bytes'] / 1024:.0f} KB |")
        p = res.get("peer", {}).get(protocol)
        if p:
            lines.append(f"| eGeMAPSv02 + RBF SVM (peer) | {_pm(p, 'uar')} | {_pm(p, 'macro_f1')} | {_pm(p, 'accuracy')} | "
                         f"{p.get('train_time_s', 0):.0f} s | 88 features | – |")
        lines.append("")
    if "cross" in res or "cross" in res.get("peer", {}):
        lines += ["### Cross-corpus, core4 (neutral, happy, sad, angry)", "",
                  "| model | RAVDESS → CREMA-D UAR | CREMA-D → RAVDESS UAR |", "|---|---|---|"]
        fams = sorted({f for t in res.get("cross", {}).values() for f in t})
        for fam in fams:
            a = res["cross"].get("ravdess_to_crema", {}).get(fam, {}).get("uar")
            b = res["cross"].get("crema_to_ravdess", {}).get(fam, {}).get("uar")
            lines.append(f"| {fam} | {100 * a:.1f} | {100 * b:.1f} |" if a is not None and b is not None
                         else f"| {fam} | {a} | {b} |")
        p = res.get("peer", {}).get("cross")
        if p:
            lines.append(f"| eGeMAPSv02 + RBF SVM (peer) | {100 * p['ravdess_to_crema']:.1f} | "
                         f"{100 * p['crema_to_ravdess']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--protocols", nargs="+", default=["ravdess", "crema", "cross"])
    ap.add_argument("--families", nargs="+", default=FAMILIES)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--no-peer", action="store_true", help="skip the eGeMAPS+SVM peer (run first, minutes)")
    ap.add_argument("--summarize", type=Path, default=None, help="only print the table for a finished --out")
    args = ap.parse_args(argv)
    if args.summarize:
        res = summarize(args.summarize)
        print(json.dumps(res, indent=1))
        print(markdown(res))
        return 0
    jobs = [j for p in args.protocols for f in args.families
            for j in jobs_for(p, f, args.data_root, args.out, args.epochs, args.folds)]
    # biggest first: CREMA-D and the merged final runs take longest
    jobs.sort(key=lambda j: ("crema" not in j["name"] and "final" not in j["name"], j["name"]))
    extra = ["--threads", str(args.threads), "--device", args.device, "--num-workers", "2"]
    if args.cache_dir:
        extra += ["--cache-dir", args.cache_dir]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not args.no_peer and not (args.out / "peer_egemaps_svm.json").exists():
        run_peer(args.out, args.data_root, args.folds, args.protocols)
    print(f"{len(jobs)} jobs, {args.jobs} at a time, on {platform.node()} ({os.cpu_count()} CPUs), device {args.device}")
    with ThreadPoolExecutor(args.jobs) as pool:
        statuses = list(pool.map(lambda j: run_job(j, extra if j["cmd"][0] == "train" else [], env), jobs))
    res = summarize(args.out)
    res["_run"] = {"seconds": time.time() - t0, "jobs": statuses, "machine": platform.platform(),
                   "cpus": os.cpu_count(), "command": " ".join(sys.argv)}
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    print(markdown(res))
    return 0 if all(s["status"].startswith(("ok", "skipped")) for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())

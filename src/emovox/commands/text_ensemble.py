"""``emovox text-ensemble``: several trained text models' scores averaged, with thresholds tuned on dev."""

from __future__ import annotations

import argparse

HELP = ("average several text models' scores (an ensemble folder that refers to them) with per-class thresholds "
        "tuned on a labelled dev split")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--member", action="append", required=True,
                   help="a text model folder or shipped name (default, mpnet); give it twice or more")
    p.add_argument("--weight", type=float, action="append", default=None,
                   help="each member's weight, in --member order (None: equal)")
    p.add_argument("--dev", required=True, help="labelled TSV the thresholds are tuned on (GoEmotions dev.tsv)")
    p.add_argument("--output-dir", required=True,
                   help="the ensemble folder (it refers to the members by relative path: keep them beside it)")
    p.add_argument("--top-k", type=int, default=None, help="at most K labels per text (None: the first member's)")
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                   help="the runtime the members are scored on (auto: ONNX Runtime where a member has its graph)")


def run(args: argparse.Namespace) -> int:
    import json

    from emovox.text import load_text_model, model_path
    from emovox.text.ensemble import build_ensemble

    if len(args.member) < 2:
        raise SystemExit("emovox text-ensemble: give --member at least twice")
    report = build_ensemble([model_path(m) for m in args.member], args.dev, args.output_dir,
                            load_member=lambda p: load_text_model(p, backend=args.backend), weights=args.weight,
                            top_k=args.top_k)
    print(json.dumps({"output_dir": args.output_dir, "dev_macro_f1": report["per_class_thresholds"]["macro_f1"],
                      "dev_macro_f1_crossfit": report["per_class_thresholds_crossfit"]["macro_f1"],
                      "dev_auroc_macro": report["auroc_macro"]}, indent=2))
    return 0

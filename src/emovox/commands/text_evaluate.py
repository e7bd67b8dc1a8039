"""``emovox text-evaluate``: score a text model on a labelled TSV split (its own thresholds)."""

from __future__ import annotations

import argparse

HELP = ("evaluate a text emotion model on a labelled TSV split; writes metrics_overall.json, "
        "per_class_metrics_<split>.csv (and per_class_metrics.csv) and the inference_config.json used")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="text model folder, emovox's or a Hugging Face sequence classifier (None: the shipped model)")
    p.add_argument("--data", required=True, help="TSV split: text<TAB>label ids<TAB>id, no header")
    p.add_argument("--output-dir", required=True, help="folder for the metrics files")
    p.add_argument("--split", default=None,
                   help="split name in per_class_metrics_<split>.csv (None: the data file's name, e.g. test)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                   help="auto: ONNX Runtime when the model folder has its graph, else PyTorch")


def run(args: argparse.Namespace) -> int:
    import json

    from emovox.text import evaluate_text_model, load_text_model

    model = load_text_model(args.model, backend=args.backend)
    report = evaluate_text_model(model, args.data, out_dir=args.output_dir, batch_size=args.batch_size,
                                 split=args.split)
    pc, gl = report["per_class_thresholds"], report["global_threshold"]
    print(json.dumps({
        "data": args.data, "n_examples": report["n_examples"],
        "macro_f1": pc["macro_f1"], "micro_f1": pc["micro_f1"],
        "macro_f1_global_threshold": gl["macro_f1"], "auroc_macro": report["auroc_macro"],
        "output_dir": args.output_dir,
    }, indent=2))
    return 0

"""``emovox text-export``: a text model's ONNX Runtime graph, so it runs without PyTorch."""

from __future__ import annotations

import argparse

HELP = ("write a text model's ONNX Runtime graph (MODEL/onnx: encoder, pooling, head; tokenizer.json; a record "
        "of the weights it was built from), checked against PyTorch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="emovox text model folder (emovox text-train writes one)")
    p.add_argument("--output-dir", default=None,
                   help="None: write MODEL/onnx; else a copy of the model folder here with its own onnx/")
    p.add_argument("--self-contained", action="store_true",
                   help="keep the weights inside the graph (about 90 MB for MiniLM) so the folder runs where the "
                        "encoder's package is not installed; default: references filled from it once, then cached")


def run(args: argparse.Namespace) -> int:
    import json

    from emovox.text import export_text_onnx
    from emovox.text.runtime import RUNTIME_DIR, RUNTIME_FILE

    root = export_text_onnx(args.model, args.output_dir, self_contained=args.self_contained)
    manifest = json.loads((root / RUNTIME_DIR / RUNTIME_FILE).read_text(encoding="utf-8"))
    print(json.dumps({"model": str(root), "onnx": str(root / RUNTIME_DIR),
                      "self_contained": manifest["external_weights"] is None,
                      "parity_max_abs_diff": manifest["parity_max_abs_diff"]}, indent=2))
    return 0

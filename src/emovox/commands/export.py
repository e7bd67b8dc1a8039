"""emovox export: a model folder → ONNX, Core ML and TorchScript files for devices, checked against PyTorch."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys

HELP = "export a model for devices: ONNX, Core ML, TorchScript (waveform-in and feature-in), checked against PyTorch"

_FORMATS = ("onnx", "coreml", "torchscript", "all")


def _formats(value: str) -> list[str]:
    parts = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in parts if v not in _FORMATS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(bad) or value!r}; choose from {', '.join(_FORMATS)}")
    return parts


def add_arguments(p: argparse.ArgumentParser) -> None:
    # defaults are written into each help text (most are "not given" options)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", required=True, help="model folder (best_model.pth, model_config.json, labels.json) "
                   "or a shipped model's name")
    p.add_argument("--output-dir", default=None, help="folder to create with the exported files (required, except "
                   "for --runtime alone)")
    p.add_argument("--runtime", action="store_true",
                   help="(also) write the model folder's ONNX Runtime graphs, MODEL/onnx/, so `emovox classify`, "
                        "`stream`, `serve` and load_model() run this model without PyTorch, as they run the shipped "
                        "models; alone, nothing else is exported")
    p.add_argument("--format", type=_formats, action="append", default=None, metavar="FORMAT",
                   help="onnx, coreml, torchscript or all; repeat or comma-separate for several (default: all)")
    p.add_argument("--input", choices=["waveform", "features", "both"], default="both",
                   help="graph input: 16 kHz samples (front-end inside) or raw log-mel/MFCC features "
                        "(normalisation inside; streaming models: one frame plus state) (default: both)")
    p.add_argument("--input-name", default=None, help="input tensor name (default: the model config's io names; "
                   "needs --input waveform or --input features)")
    p.add_argument("--output-name", default=None, help="output tensor name (default: emotion_logits)")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write dynamically quantised ONNX files (default: no)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--coreml-flavour", choices=["neuralnetwork", "mlprogram", "both"], default="both",
                   help=".mlmodel (neural network), .mlpackage (ML program) or both (default: both)")
    p.add_argument("--coreml-max-seconds", type=float, default=60.0,
                   help="longest clip in seconds the Core ML waveform input accepts (flexible length up to "
                        "this; default: 60)")
    p.add_argument("--check-audio", nargs="+", default=None, metavar="FILE",
                   help="audio files to check the exports on (default: synthetic clips)")
    p.add_argument("--no-check", action="store_true", help="skip running the exports against PyTorch")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed logit difference from PyTorch (default: 1e-4)")
    p.add_argument("--overwrite", action="store_true", help="replace --output-dir if it exists")
    p.add_argument("--author", default=None, help="Core ML author (default: the config's, else 'emovox')")
    p.add_argument("--license", default=None, help="Core ML licence text (default: the config's)")
    p.add_argument("--description", default=None, help="model description for the metadata")
    p.add_argument("--json", action="store_true", help="print the full export report as JSON")


def run(args: argparse.Namespace) -> int:
    from emovox.export import export_model
    from emovox.inference import resolve_model_path

    _, folder = resolve_model_path(args.model)
    if args.runtime:
        from emovox.export.runtime_build import build_runtime

        print(f"wrote {build_runtime(folder)} (ONNX Runtime graphs: this model now runs without PyTorch)")
        if args.format is None and args.output_dir is None:
            return 0
    if args.output_dir is None:
        raise ValueError("--output-dir is required (only --runtime alone writes into the model folder)")
    formats = [f for group in (args.format or [["all"]]) for f in group]
    with quiet_converters(args.verbose):
        report = export_model(
            folder, args.output_dir, formats=formats, inputs=args.input, input_name=args.input_name,
            output_name=args.output_name, quantize=args.quantize, opset=args.opset,
            coreml_flavours=args.coreml_flavour, coreml_max_seconds=args.coreml_max_seconds,
            check=not args.no_check, check_audio=args.check_audio, tolerance=args.tolerance,
            overwrite=args.overwrite, author=args.author, license_text=args.license, description=args.description,
        )
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    _summary(report)
    return 0


def quiet_converters(verbose: int):
    """A context that hides the converters' chatter unless ``-v``: coremltools logs warnings about
    converters emovox does not use (scikit-learn, untested torch versions) and draws progress bars on
    stderr with no switch to turn them off; the export report says what happened, and errors still
    end the command with one line."""
    if verbose:
        return contextlib.nullcontext()
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return contextlib.redirect_stderr(io.StringIO())


def _summary(report) -> None:
    out = sys.stdout
    out.write(f"exported to {report.output_dir} in {report.seconds:.1f} s\n")
    for fmt, per in report.files.items():
        for kind, f in per.items():
            names = ", ".join(f.values()) if isinstance(f, dict) else f
            out.write(f"  {fmt:<12} {kind:<9} {names}\n")
    for kind, per in report.checks.items():
        for fmt, c in per.items():
            if "max_abs_diff" in c:
                out.write(f"  check {kind:<9} {fmt:<22} max |logit - PyTorch| = {c['max_abs_diff']:.2e} "
                          f"({len(c['cases'])} cases)\n")
            else:
                out.write(f"  check {kind:<9} {fmt:<22} spec ok; {c.get('numeric_check', '')}\n")
    for kind, q in report.quantization.items():
        agree = (q.get("vs_float_onnx") or {}).get("top1_agreement")
        out.write(f"  int8  {kind:<9} {q['float32_bytes'] / 1e6:.2f} MB -> {q['int8_bytes'] / 1e6:.2f} MB"
                  + (f", top-1 agreement with float {agree:.0%}" if agree is not None else "") + "\n")
    out.write("  preprocessing.json: how to compute the feature input exactly; export.json: the full report\n")

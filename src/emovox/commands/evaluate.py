"""``emovox evaluate``: metrics and confusion matrices of any model folder on any corpus."""

from __future__ import annotations

HELP = "evaluate a model folder on a corpus (metrics, report, confusion matrices)"

EPILOG = """\
Corpus labels are mapped to the model's (calm counts as neutral for a model without calm);
clips whose label the model cannot express are left out and counted; predictions take the
argmax over the model labels present in the corpus. Writes the text and audio evaluation kit's metrics_overall.json,
metrics_report.csv, confusion_matrix.npy, confusion_matrix_counts.png (also as
confusion_matrix.png), confusion_matrix_rownorm.png, labels.json and model_meta.json to
--output-dir.
"""


def add_arguments(p) -> None:
    p.epilog = EPILOG
    p.add_argument("--model", required=True,
                   help="a shipped model's name (default, crnn, streaming), a model folder or its best_model.pth")
    p.add_argument("data_dir", nargs="+", metavar="DATA_DIR", help="corpus folder(s) or labels .csv file(s)")
    p.add_argument("--corpus", nargs="+", action="extend", default=None, metavar="NAME",
                   help="corpus layout per data dir; default: detected")
    p.add_argument("--labels", default=None, help="extra label merges before mapping, e.g. 'disgust=angry'")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True)
    p.add_argument("--speakers", default=None, help="evaluate only these comma-separated speakers")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    p.add_argument("--cache-dir", dest="cache_dir", default=None, help="feature cache folder")
    p.add_argument("--no-cache", dest="no_cache", action="store_true")
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")


def run(args) -> int:
    from emovox.commands.train import load_rows
    from emovox.data.cache import default_cache_dir
    from emovox.data.splits import resolve_speaker
    from emovox.modelio import load_model_dir
    from emovox.training.evaluation import evaluate_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from pathlib import Path

    from emovox.inference import resolve_model_path

    model = args.model if Path(args.model).exists() else resolve_model_path(args.model)[1]
    loaded = load_model_dir(model)
    rows = load_rows(args.data_dir, args.corpus)
    if args.speakers:
        known = {r.speaker for r in rows if r.speaker}
        wanted = {resolve_speaker(s, known) for s in args.speakers.split(",") if s.strip()}
        rows = [r for r in rows if r.speaker in wanted]
    warn_trained_speakers(Path(model), rows)
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    ev = evaluate_model(loaded, rows, args.output_dir, batch_size=args.batch_size, cache=cache,
                        num_workers=args.num_workers)
    m = ev.metrics
    if m["n_dropped"]:
        print(f"left out {m['n_dropped']} clip(s) whose label the model cannot express: "
              + ", ".join(f"{k} {v}" for k, v in m["dropped_unexpressible"].items()))
    if m["n_unreadable"]:
        print(f"skipped {m['n_unreadable']} unreadable clip(s)")
    print(f"{m['n']} clips, labels scored: {', '.join(ev.labels)}")
    print(f"UAR {m['uar']:.4f}  accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
          f"weighted-F1 {m['weighted_f1']:.4f}  ECE {m['ece']:.4f} (calibrated {m['ece_calibrated']:.4f})")
    print(f"wrote {args.output_dir}")
    return 0


def warn_trained_speakers(model_dir, rows) -> list[str]:
    """Warn (stderr) when clips come from speakers the model was trained on (its model_meta.json lists them):
    their UAR is not a held-out figure. Returns those speakers."""
    import json
    import sys

    meta_file = model_dir / "model_meta.json" if model_dir.is_dir() else model_dir.parent / "model_meta.json"
    try:
        trained = set(json.loads(meta_file.read_text()).get("split", {}).get("train_speakers") or ())
    except (OSError, ValueError, AttributeError):
        return []
    seen = sorted({str(r.speaker) for r in rows if r.speaker and str(r.speaker) in trained})
    if seen:
        n = sum(1 for r in rows if r.speaker and str(r.speaker) in trained)
        held_out = sorted({str(r.speaker) for r in rows if r.speaker and str(r.speaker) not in trained})
        print(f"warning: {n} of {len(rows)} clips are from {len(seen)} speaker(s) this model was trained on "
              f"({', '.join(seen[:8])}{', ...' if len(seen) > 8 else ''}): the figures below are not held-out "
              + (f"results; --speakers {','.join(held_out)} scores only the others" if held_out else "results"),
              file=sys.stderr)
    return seen

"""emovox classify: files, folders and globs → one record per file."""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import sys
from pathlib import Path

from ..defaults import CONFIDENCE_THRESHOLD, MAX_CLIP_S

HELP = "classify the emotion of audio files with the shipped default model (or --model)"


#: What a record can hold (``Prediction.to_dict`` plus the path), for ``--fields``.
FIELDS = ("path", "emotion", "confidence", "scores", "music_mood", "low_confidence", "warning", "silent",
          "unsupported_labels")


def parse_fields(spec: str | None, fmt: str) -> list[str] | None:
    """``--fields`` → the record keys to keep (None: all); a clear error for unknown names or formats."""
    if spec is None:
        return None
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIELDS]
    if not names or unknown:
        raise ValueError(f"--fields {spec!r}: unknown field(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(FIELDS)}")
    if fmt not in ("json", "jsonl"):
        raise ValueError(f"--fields works with --format json or jsonl, not {fmt}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files, folders (searched recursively) or globs")
    p.add_argument("--model", default=None, help="shipped model name or model folder (default: the shipped default)")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                   help="runtime: auto (ONNX Runtime where the model has its graphs, as the shipped models do; "
                        "PyTorch otherwise), onnx (also a folder written by `emovox export`), or torch")
    p.add_argument("--labels", default=None, help="fold scores into another label set: basic5, app6, core4, ... "
                   "or a mapping like disgust=angry")
    p.add_argument("--top-k", type=int, default=None, help="keep only the K best scores in each record")
    p.add_argument("--format", choices=["json", "jsonl", "csv", "table"], default="json", help="output format")
    p.add_argument("--fields", default=None, metavar="NAMES",
                   help="json/jsonl: keep only these fields of each record, e.g. 'emotion,confidence' (seed 001's "
                        f"output); any of {', '.join(FIELDS)} (an 'error' field is always kept)")
    p.add_argument("--threshold", type=float, default=CONFIDENCE_THRESHOLD,
                   help="flag low_confidence below this top score")
    p.add_argument("--batch-size", type=int, default=16, help="clips per model call (16 keeps activations in cache on a CPU)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, at most 8)")
    p.add_argument("--max-duration-s", type=float, default=MAX_CLIP_S, help="reject clips longer than this")
    p.add_argument("--timeline", action="store_true", help="sliding-window timeline for long recordings")
    p.add_argument("--window-s", type=float, default=3.0, help="timeline window length (s)")
    p.add_argument("--hop-s", type=float, default=1.0, help="timeline hop (s)")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="with --timeline: draw emotion over time")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given, folders recursively, globs expanded; order kept, duplicates dropped.

    A path that matches nothing is kept so that its record reports the error.
    """
    from ..audio import find_audio_files

    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += [str(f) for f in find_audio_files(path)]
        elif not path.exists() and any(c in p for c in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            out += [m for m in matches if Path(m).is_file()] or [p]
        else:
            out.append(p)
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _write(records: list[dict], fmt: str, labels: list[str], out=None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        obj = records[0] if len(records) == 1 else records
        out.write(json.dumps(obj, indent=2) + "\n")
    elif fmt == "jsonl":
        for r in records:
            out.write(json.dumps(r) + "\n")
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "emotion", "confidence", "music_mood", "low_confidence", *labels, "error"])
        for r in records:
            s = r.get("scores", {})
            w.writerow([r["path"], r.get("emotion", ""), r.get("confidence", ""), r.get("music_mood", ""),
                        r.get("low_confidence", ""), *[s.get(lab, "") for lab in labels], r.get("error", "")])
        out.write(buf.getvalue())
    else:
        width = max([len(r["path"]) for r in records] + [4])
        out.write(f"{'path':<{width}}  {'emotion':<10} {'conf':>6}  mood\n")
        for r in records:
            if "error" in r:
                out.write(f"{r['path']:<{width}}  ERROR: {r['error']}\n")
            else:
                flag = " (low confidence)" if r["low_confidence"] else ""
                out.write(f"{r['path']:<{width}}  {r['emotion']:<10} {r['confidence']:>6.3f}  {r['music_mood']}{flag}\n")


def run(args) -> int:
    from ..audio import AudioError
    from ..inference import load_model

    try:
        fields = parse_fields(args.fields, args.format)
    except ValueError as e:
        print(f"emovox classify: error: {e}", file=sys.stderr)
        return 2
    model = load_model(args.model, backend=args.backend, threshold=args.threshold,
                       max_duration_s=args.max_duration_s)
    files = expand_paths(args.paths)
    if not files:
        print("emovox classify: error: no audio files found", file=sys.stderr)
        return 2
    labels = model.output_labels(args.labels)
    records: list[dict] = []
    if args.timeline:
        for f in files:
            try:
                tl = model.timeline(f, window_s=args.window_s, hop_s=args.hop_s, labels=args.labels,
                                    batch_size=args.batch_size)
            except AudioError as e:
                records.append({"path": f, "error": str(e)})
                continue
            rec = {"path": f, **tl.to_dict()}
            if args.plot:
                out = Path(args.plot)
                if len(files) > 1:
                    out = out.with_name(f"{out.stem}_{Path(f).stem}{out.suffix}")
                rec["plot"] = str(tl.plot(out))
            records.append(rec)
        if args.format in ("csv", "table"):
            args.format = "json"  # segments don't fit one row per file
    else:
        progress = not args.no_progress and sys.stderr.isatty()
        results = model.predict_batch(files, labels=args.labels, batch_size=args.batch_size,
                                      num_workers=args.workers, errors="return", progress=progress)
        for f, r in zip(files, results):
            if isinstance(r, Exception):
                records.append({"path": f, "error": str(r)})
            else:
                records.append({"path": f, **r.to_dict(top_k=args.top_k)})
    if fields is not None and not args.timeline:
        records = [{k: r[k] for k in fields if k in r} | ({"error": r["error"]} if "error" in r else {})
                   for r in records]
    _write(records, args.format, labels)
    failed = sum("error" in r for r in records)
    if failed:
        print(f"emovox classify: {failed} of {len(records)} file(s) could not be classified", file=sys.stderr)
        return 1
    return 0

"""emovox classify: files, folders and globs → one record per file."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from emovox.commands import segment_records as segments_cli
from emovox.commands.records import FIELDS, build_record, expand_inputs, keep_fields
from emovox.defaults import CONFIDENCE_THRESHOLD, MAX_CLIP_S
from emovox.scale.options import add_batch_arguments

#: Files, folders, globs and manifests → paths (the name this module has always had).
expand_paths = expand_inputs

HELP = "classify the emotion of audio files with the shipped default model (or --model)"


def parse_fields(spec: str | None, fmt: str, extra: tuple[str, ...] = ()) -> list[str] | None:
    """``--fields`` → the record keys to keep (None: all); a clear error for unknown names or formats."""
    if spec is None:
        return None
    names = [n.strip() for n in spec.split(",") if n.strip()]
    known = (*extra, *FIELDS)
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise ValueError(f"--fields {spec!r}: unknown field(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(known)}")
    if fmt not in ("json", "jsonl"):
        raise ValueError(f"--fields works with --format json or jsonl, not {fmt}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    from emovox.inference import BACKENDS  # the runtimes load_model takes (no torch import)

    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="audio files, folders (searched recursively), globs, or manifests (.jsonl or .csv with a "
                        "'path' column, as `emovox manifest` writes)")
    p.add_argument("--model", default=None, help="shipped model name or model folder (default: the shipped default)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="runtime: auto (ONNX Runtime where the model has its graphs, as the shipped models do; "
                        "PyTorch otherwise), onnx (also a folder written by `emovox export`), or torch")
    p.add_argument("--labels", default=None, help="fold scores into another label set: basic5, app6, core4, ... "
                   "or a mapping like disgust=angry")
    p.add_argument("--top-k", type=int, default=None, help="keep only the K best scores in each record")
    p.add_argument("--format", choices=["json", "jsonl", "csv", "table"], default="json", help="output format")
    p.add_argument("--fields", default=None, metavar="NAMES",
                   help="json/jsonl: keep only these fields of each record, e.g. 'emotion,confidence' (the Keras backend CNN's "
                        f"output); any of {', '.join(FIELDS)} (an 'error' field is always kept)")
    p.add_argument("--threshold", type=float, default=CONFIDENCE_THRESHOLD,
                   help="flag low_confidence below this top score")
    p.add_argument("--batch-size", type=int, default=16, help="clips per model call (16 keeps activations in cache on a CPU)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count, at most 8)")
    p.add_argument("--max-duration-s", type=float, default=None,
                   help=f"reject clips longer than this (default {MAX_CLIP_S:g} s; --segments: no limit)")
    p.add_argument("--adapt", action="store_true",
                   help="standardise the default model's features on these inputs themselves (a folder of one "
                        "domain: one microphone, room, language or corpus; at least 30 clips): see docs/real-recordings.md")
    p.add_argument("--timeline", action="store_true", help="sliding-window timeline for long recordings")
    p.add_argument("--window-s", type=float, default=3.0, help="timeline window length (s)")
    p.add_argument("--hop-s", type=float, default=1.0, help="timeline hop (s)")
    p.add_argument("--all-windows", action="store_true",
                   help="with --timeline: classify every window (default: windows without speech are marked "
                        "\"speech\": false, not classified)")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="with --timeline: draw emotion over time; with --segments: segments over the waveform")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="write the records to FILE (.jsonl or .parquet) instead of printing them")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: an actor pool on Ray Data (a local Ray, or --ray-address)")
    add_batch_arguments(p)
    segments_cli.add_arguments(p)


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
    try:
        fields = parse_fields(args.fields, "jsonl" if args.output else args.format,
                              segments_cli.SEGMENT_FIELDS if args.segments else ())
        _check_engine(args)
        segments_cli.check_args(args)
    except ValueError as e:
        print(f"emovox classify: error: {e}", file=sys.stderr)
        return 2
    files = expand_paths(args.paths)
    if not files:
        print("emovox classify: error: no audio files found", file=sys.stderr)
        return 2
    if args.engine == "ray":
        records, labels = _ray_records(args, files, fields), None
    else:
        records, labels = _local_records(args, files, fields)
    if args.output:
        from emovox.commands.records import RecordWriter

        extra = segments_cli.SEGMENT_FIELDS if args.segments else ()
        with RecordWriter(args.output, fields=fields, extra=extra) as out:
            failed = _count_failed(out, records)
        print(f"emovox classify: wrote {out.count} record(s) to {args.output}", file=sys.stderr)
    else:
        records = list(records)
        if args.timeline and args.format in ("csv", "table"):
            args.format = "json"  # segments don't fit one row per file
        writer = segments_cli.write if args.segments and args.format in ("csv", "table") else _write
        writer(records, args.format, labels if labels is not None else _labels_of(records))
        failed = sum("error" in r for r in records)
    if failed:
        print(f"emovox classify: {failed} of {len(files)} file(s) could not be classified", file=sys.stderr)
        return 1
    return 0


def _check_engine(args) -> None:
    """What --output and --engine ray cannot do, said before any work."""
    if args.output:
        from emovox.commands.records import output_format

        output_format(args.output)
        if not Path(args.output).absolute().parent.is_dir():
            raise ValueError(f"--output {args.output!r}: no such folder {str(Path(args.output).parent)!r}")
        if args.timeline:
            raise ValueError("--output writes one record per clip; write timelines with --format json")
    if args.engine == "ray" and (args.timeline or args.plot):
        raise ValueError("--engine ray classifies whole clips; --timeline and --plot run locally only")
    if args.engine == "ray" and getattr(args, "adapt", False):
        raise ValueError("--adapt needs every input's features before the first answer; it runs locally (drop "
                         "--engine ray), or adapt once with `emovox adapt MODEL CLIPS --out FOLDER` and classify "
                         "with --model FOLDER on Ray")
    if getattr(args, "adapt", False) and (args.timeline or args.segments):
        raise ValueError(f"--adapt classifies whole clips; it does not combine with "
                         f"{'--timeline' if args.timeline else '--segments'}")


def _count_failed(out, records) -> int:
    failed = 0
    for r in records:
        failed += "error" in r
        out.write([r])
    return failed


def _labels_of(records: list[dict]) -> list[str]:
    """The score columns of --format csv when no model was loaded here (--engine ray)."""
    return next((list(r["scores"]) for r in records if "scores" in r), [])


def _local_records(args, files: list[str], fields):
    """(records, output labels) from the model in this process."""
    from emovox.audio import AudioError
    from emovox.errors import AdaptationError
    from emovox.inference import load_model

    model = load_model(args.model, backend=args.backend, threshold=args.threshold,
                       max_duration_s=_max_duration(args))
    labels = model.output_labels(args.labels)
    if args.segments:
        return segments_cli.segment_records(model, files, args, fields), labels
    records: list[dict] = []
    if args.timeline:
        for f in files:
            try:
                tl = model.timeline(f, window_s=args.window_s, hop_s=args.hop_s, labels=args.labels,
                                    batch_size=args.batch_size, speech_only=not args.all_windows)
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
        return records, labels
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        results = model.predict_batch(files, labels=args.labels, batch_size=args.batch_size,
                                      num_workers=args.workers, errors="return", progress=progress,
                                      adapt=args.adapt)
    except AdaptationError as e:
        raise SystemExit(f"emovox classify: error: {e}") from None
    return [keep_fields(build_record(f, r, top_k=args.top_k), fields) for f, r in zip(files, results)], labels


def _max_duration(args) -> float | None:
    """--max-duration-s, else the clip limit (--segments: none, recordings are decoded in blocks)."""
    if args.max_duration_s is not None or args.segments:
        return args.max_duration_s
    return MAX_CLIP_S


def _ray_records(args, files: list[str], fields):
    """Records from an actor pool on Ray Data, streamed in input order."""
    import math

    from emovox.scale.options import batch_options, ray_options
    from emovox.scale.ray_batch import ModelSpec, check_model, classify_with_ray
    from emovox.scale.ray_support import ray_session

    ray_opts, batch_opts = ray_options(args), batch_options(args)
    spec = ModelSpec(model=args.model, backend=args.backend, threshold=args.threshold,
                     max_duration_s=_max_duration(args), labels=args.labels, top_k=args.top_k,
                     fields=tuple(fields) if fields else None, batch_size=args.batch_size,
                     decode_threads=args.workers, threads=max(1, math.ceil(batch_opts.cpus_per_actor)),
                     segments=segments_cli.options_from_args(args) if args.segments else None)
    if ray_opts.address is None:
        check_model(spec)  # same machine: a wrong model is one line before Ray starts
    with ray_session(ray_opts, part="data"):
        yield from classify_with_ray(files, spec, batch_opts)

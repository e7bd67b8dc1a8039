"""``emovox classify REC --segments``: its options, one record per speech segment, and csv/table output."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from emovox.segments.segmenter import SegmentOptions

#: What a segment record adds to a clip record (``--fields`` may name them with ``--segments``).
SEGMENT_FIELDS = ("segment", "start", "end")
_DEFAULTS = SegmentOptions()


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speech segments (--segments)")
    g.add_argument("--segments", action="store_true",
                   help="find the speech (Silero VAD) and classify each segment: one record per segment with its "
                        "start and end (s); recordings of any length, decoded in blocks")
    g.add_argument("--min-speech-ms", type=float, default=_DEFAULTS.min_speech_ms,
                   help="drop speech shorter than this")
    g.add_argument("--min-silence-ms", type=float, default=_DEFAULTS.min_silence_ms,
                   help="a pause must last this long to end a segment")
    g.add_argument("--speech-pad-ms", type=float, default=_DEFAULTS.speech_pad_ms,
                   help="pad each segment by this much on both sides")
    g.add_argument("--max-segment-s", type=float, default=_DEFAULTS.max_segment_s,
                   help="split longer segments at their longest pause (0: no limit)")
    g.add_argument("--vad-threshold", type=float, default=_DEFAULTS.threshold,
                   help="speech probability at which speech starts")
    g.add_argument("--vad-exit-threshold", type=float, default=None,
                   help="speech probability under which a pause starts (default: --vad-threshold minus 0.15); "
                        "lower both for speakers quieter than the noise, e.g. 0.2 and 0.15")
    g.add_argument("--context-ms", type=float, default=_DEFAULTS.context_ms,
                   help="classify each segment with this much of the recording on both sides (never into a "
                        "neighbouring segment); the reported start and end stay as found")


def options_from_args(args) -> SegmentOptions:
    return SegmentOptions(threshold=args.vad_threshold, neg_threshold=args.vad_exit_threshold,
                          min_speech_ms=args.min_speech_ms,
                          min_silence_ms=args.min_silence_ms, speech_pad_ms=args.speech_pad_ms,
                          max_segment_s=args.max_segment_s or None, context_ms=args.context_ms)


def check_args(args) -> None:
    """What --segments cannot be combined with, said before any work (ValueError)."""
    if not args.segments:
        return
    if args.timeline:
        raise ValueError("--segments and --timeline are two views of a recording: choose one")
    options_from_args(args)  # a bad value fails here


def segment_records(model, files: list[str], args, fields) -> list[dict]:
    """Every file's segment records (an error record for a file that cannot be read); a file without speech
    gives none and a line on stderr."""
    from emovox.commands.records import keep_fields
    from emovox.errors import AudioError

    options = options_from_args(args)
    progress = not args.no_progress and sys.stderr.isatty()
    records: list[dict] = []
    for f in files:
        try:
            result = model.segments(f, labels=args.labels, batch_size=args.batch_size, options=options,
                                    max_duration_s=args.max_duration_s, progress=progress)
        except AudioError as e:
            records.append({"path": f, "error": str(e)})
            continue
        if result.message:
            print(f"emovox classify: {result.message}", file=sys.stderr)
        recs = result.records(f, top_k=args.top_k)
        if args.plot:
            plot = _plot_path(args.plot, f, len(files))
            result.plot(plot)
            print(f"emovox classify: {f}: segments drawn in {plot}", file=sys.stderr)
        records += [keep_fields(r, fields) for r in recs]
    return records


def _plot_path(plot: str, f: str, n_files: int) -> Path:
    out = Path(plot)
    return out.with_name(f"{out.stem}_{Path(f).stem}{out.suffix}") if n_files > 1 else out


def write(records: list[dict], fmt: str, labels: list[str], out=None) -> None:
    """--format csv or table for segment records (json and jsonl are the generic writer's)."""
    out = out or sys.stdout
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "segment", "start", "end", "emotion", "confidence", "music_mood", "low_confidence",
                    *labels, "error"])
        for r in records:
            s = r.get("scores", {})
            w.writerow([r["path"], *(r.get(k, "") for k in ("segment", "start", "end", "emotion", "confidence",
                                                              "music_mood", "low_confidence")),
                        *[s.get(lab, "") for lab in labels], r.get("error", "")])
        out.write(buf.getvalue())
        return
    width = max([len(r["path"]) for r in records] + [4])
    out.write(f"{'path':<{width}}  {'start':>8} {'end':>8}  {'emotion':<10} {'conf':>6}\n")
    for r in records:
        if "error" in r:
            out.write(f"{r['path']:<{width}}  ERROR: {r['error']}\n")
        else:
            flag = " (low confidence)" if r["low_confidence"] else ""
            out.write(f"{r['path']:<{width}}  {r['start']:>8.2f} {r['end']:>8.2f}  {r['emotion']:<10} "
                      f"{r['confidence']:>6.3f}{flag}\n")

"""``emovox text``: emotions in text (GoEmotions' 28 labels, or Ekman / the audio models' 7)."""

from __future__ import annotations

import argparse
import sys

HELP = "predict emotions in text: labels above their thresholds with scores, and every label's score"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("texts", nargs="*", metavar="TEXT", help="text(s) to classify")
    p.add_argument("--file", action="append", default=[], metavar="PATH",
                   help="UTF-8 file with one text per line ('-' for stdin); repeatable")
    p.add_argument("--model", default=None, help="text model folder, or a shipped model: default (MiniLM), mpnet, ensemble (the mean of "
                        "the two; most accurate) (None: default)")
    p.add_argument("--format", choices=("table", "json", "jsonl"), default="table")
    p.add_argument("--labels", choices=("goemotions", "ekman", "audio7"), default="goemotions",
                   help="output labels: the model's 28, Ekman's 7 (group score = max over members), or "
                        "Ekman's 7 under the speech models' names")
    p.add_argument("--top-k", type=int, default=None, help="at most K labels per text (None: the model's top_k; 0: no cap)")
    p.add_argument("--threshold", default="per-class",
                   help="'per-class' (tuned on dev), 'global' or a number in (0, 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                   help="auto: ONNX Runtime when the model folder has its graph (the shipped model does; no "
                        "PyTorch), else PyTorch; torch: PyTorch + transformers (emovox[text]), for parity checks")


def _inputs(args: argparse.Namespace) -> list[tuple[dict, str]]:
    from emovox.text import TextError, read_lines

    items = [({"index": i}, t) for i, t in enumerate(args.texts)]
    for path in args.file:
        if path == "-":
            data = sys.stdin.buffer.read()
            try:
                lines = data.decode("utf-8").removeprefix("\ufeff").split("\n")
            except UnicodeDecodeError as e:
                raise TextError(f"<stdin>: not valid UTF-8 at byte offset {e.start} ({e.reason})") from e
            if lines and lines[-1] == "":
                lines.pop()
            lines = [x.removesuffix("\r") for x in lines]
        else:
            lines = read_lines(path)
        items += [({"file": path, "line": n}, t) for n, t in enumerate(lines, 1)]
    return items


def _table(where: dict, rec: dict) -> str:
    head = f"{where['file']}:{where['line']}" if "file" in where else f"[{where['index']}]"
    text = rec["text"] if len(rec["text"]) <= 70 else rec["text"][:67] + "..."
    if rec.get("error"):
        return f"{head} ERROR: {rec['error']}\n"
    extra = f", truncated at {rec['n_tokens']}+ tokens" if rec["truncated"] else ""
    chosen = ", ".join(f"{x['label']} {x['score']:.3f}" for x in rec["labels"]) or "(none above threshold)"
    ranked = sorted(rec["scores"].items(), key=lambda kv: -kv[1])
    cells = [f"{k:<15}{v:.3f}" for k, v in ranked]
    rows = ["    " + "  ".join(cells[i:i + 4]) for i in range(0, len(cells), 4)]
    return f"{head} {text!r}{extra}\n  labels: {chosen}\n  scores:\n" + "\n".join(rows) + "\n"


def run(args: argparse.Namespace) -> int:
    import json

    from emovox.text import load_text_model

    items = _inputs(args)
    if not items:
        raise ValueError("nothing to classify: give TEXT arguments or --file PATH")
    model = load_text_model(args.model, backend=args.backend)
    preds = model.predict([t for _, t in items], labels=args.labels, top_k=args.top_k, threshold=args.threshold,
                          batch_size=args.batch_size, errors="record")
    records = []
    for (where, _), p in zip(items, preds):
        rec = {**where, **p.to_dict()}
        if rec["error"] is None:
            del rec["error"]
        records.append(rec)
    out = sys.stdout
    if args.format == "json":
        out.write(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
    elif args.format == "jsonl":
        for rec in records:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    else:
        out.write("\n".join(_table(where, rec) for (where, _), rec in zip(items, records)))
    n_bad = sum(1 for p in preds if p.error)
    if n_bad:
        print(f"emovox text: {n_bad} of {len(preds)} texts could not be classified (see their records)",
              file=sys.stderr)
        return 1
    return 0

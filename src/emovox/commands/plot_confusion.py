"""``emovox plot-confusion``: render a saved confusion matrix (the text and audio evaluation kit's plot_confusion_matrix.py)."""

from __future__ import annotations

HELP = "render a confusion_matrix.npy as a PNG (counts or row-normalised)"


def add_arguments(p) -> None:
    p.add_argument("--input", required=True, help="confusion matrix .npy (rows true, columns predicted)")
    p.add_argument("--labels", required=True, help="labels.json (a list of labels in matrix order)")
    p.add_argument("--output", required=True, help="PNG to write")
    p.add_argument("--normalize", choices=["none", "row"], default="none", help="counts, or each row divided by its sum")
    p.add_argument("--title", default=None)


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from emovox.training.evaluation import plot_confusion

    src = Path(args.input)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file")
    try:
        cm = np.load(src, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{src}: not a NumPy .npy array ({e})") from e
    try:
        labels = json.loads(Path(args.labels).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ValueError(f"{args.labels}: not a JSON list of labels ({e})") from e
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{args.labels}: expected a JSON list of label strings")
    out = plot_confusion(cm, labels, args.output, args.normalize, title=args.title)
    print(f"wrote {out}")
    return 0

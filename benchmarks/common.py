"""What the benchmark scripts share: where the corpora are, the per-corpus split plan and validation clips of a
shipped model, the machine description and the ``mean ± std`` cells of the reports.

Every script runs as a module from the repository root (``python -m benchmarks.NAME``), so they import each
other and this module as ``benchmarks.*``; none edits ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

#: The repository root.
REPO = Path(__file__).resolve().parents[1]
#: The shared corpora (``ravdess/``, ``crema-d/``, ``nemo/``, ``goemotions/``), beside the repository, never
#: copied into it.
DEFAULT_DATA = REPO.parent / "shared" / "data"
#: The speech corpora the default model trains on, in the order reports list them.
CORPORA = ("ravdess", "crema-d", "nemo")


def per_corpus_plan(data: Path, labels_spec: str, val_fraction: float, seed: int, corpora=CORPORA):
    """A SplitPlan whose validation speakers are ~``val_fraction`` of each corpus's speakers."""
    from emovox.data.corpora import scan
    from emovox.data.splits import train_val_split
    from emovox.training.plan import SplitPlan, map_labels

    train, val, speakers, messages = [], [], [], []
    labels: list[str] = []
    for corpus in corpora:
        rows, labs, _, _ = map_labels(scan(data / corpus, corpus, with_duration=False), labels_spec)
        labels = sorted(set(labels) | set(labs), key=lambda x: labs.index(x) if x in labs else 99)
        split = train_val_split(rows, val_fraction, seed=seed)
        train += [rows[i] for i in split.train]
        val += [rows[i] for i in split.test]
        speakers += list(split.test_speakers)
        messages.append(f"{corpus}: {split.message}")
    _, labels, _, _ = map_labels(train, labels_spec)
    plan = SplitPlan(train=train, val=val, test=[], kind="speaker", message="; ".join(messages),
                     val_message=f"validation speakers per corpus: {', '.join(speakers)}", val_speakers=speakers)
    return plan, labels


def validation_clips(model, data: Path):
    """``(corpus, clips, labels)`` for each corpus with clips of the model's validation speakers (from its
    ``model_meta.json``): the clips mapped to the model's labels, and the labels that corpus has, sorted."""
    from emovox.data.corpora import scan
    from emovox.training.plan import map_labels

    val = set(json.loads((model.path / "model_meta.json").read_text())["split"]["val_speakers"])
    for corpus in CORPORA:
        rows = [r for r in scan(data / corpus, corpus, with_duration=False) if r.speaker in val]
        if rows:
            kept, _, _, _ = map_labels(rows, ",".join(model.labels))
            yield corpus, kept, sorted({r.label for r in kept})


def machine() -> dict:
    """The CPU (its model name), cores, torch and Python versions: what a report states it ran on."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for one value; NaN mean for none)."""
    return (statistics.fmean(xs), statistics.pstdev(xs) if len(xs) > 1 else 0.0) if xs else (float("nan"), 0.0)


def pm(mean: float | None, std: float | None = None, *, scale: float = 100.0, digits: int = 1) -> str:
    """A report cell ``mean ± std`` (fractions shown as percentages by default); ``–`` when there is none."""
    if mean is None:
        return "–"
    return f"{scale * mean:.{digits}f} ± {scale * (std or 0.0):.{digits}f}"

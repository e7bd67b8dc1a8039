"""Scoring a text model on a labelled TSV split and writing the metrics files."""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

import numpy as np

from .data import TextDataset, read_tsv
from .grouping import groups_for
from .metrics import crossfit_macro_f1, evaluate, grouped_metrics, write_per_class_csv
from .model import CONFIG_FILE, METRICS_FILE, PER_CLASS_FILE, TextModel, write_json


def dataset_probabilities(model: TextModel, data: TextDataset, *, batch_size: int = 64) -> np.ndarray:
    probs, _, _ = model.probabilities(data.texts, batch_size=batch_size)
    return probs


def split_name(path: str | os.PathLike) -> str:
    """A split's name from its file (``goemotions/test.tsv`` → ``test``), safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem) or "data"


def evaluate_text_model(model: TextModel, data: str | os.PathLike | TextDataset, *,
                        out_dir: str | os.PathLike | None = None, probs: np.ndarray | None = None,
                        batch_size: int = 64, crossfit: bool = False, seed: int = 0, split: str | None = None) -> dict:
    """Metrics of ``model`` (its own thresholds, never re-tuned) on a labelled TSV split.

    Writes ``metrics_overall.json``, ``per_class_metrics.csv`` and (seed 004's names)
    ``per_class_metrics_<split>.csv`` into ``out_dir`` when given (``split``: default the data
    file's name, ``test`` for ``test.tsv``), and, unless ``out_dir`` is the model's own folder, the
    ``inference_config.json`` the scores were decided with. ``crossfit`` adds the threshold-honest
    estimate (see :func:`metrics.crossfit_macro_f1`), meaningful on the split the thresholds were
    tuned on.
    """
    if not isinstance(data, TextDataset):
        data = read_tsv(data, len(model.labels))
    if data.targets.shape[1] != len(model.labels):
        raise ValueError(f"{data.path}: {data.targets.shape[1]} labels, the model has {len(model.labels)}")
    if probs is None:
        probs = dataset_probabilities(model, data, batch_size=batch_size)
    overall, rows = evaluate(probs, data.targets, model.labels, thresholds=model.thresholds,
                             global_threshold=model.global_threshold, top_k=model.top_k,
                             always_one=model.always_one)
    report = {
        "data": {"path": str(data.path), "sha256": data.sha256, "n_examples": len(data)},
        "model": str(model.path),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **overall,
    }
    if crossfit:
        report["per_class_thresholds_crossfit"] = {
            "macro_f1": crossfit_macro_f1(probs, data.targets, seed=seed),
            "note": "per-class thresholds tuned on one half of this split and scored on the other "
                    "(2 folds, pooled): an estimate for unseen text; the figures above reuse the "
                    "split the thresholds were tuned on and flatter them",
        }
    try:
        names, groups = groups_for(model.labels, "ekman")
    except ValueError:
        pass
    else:
        report["ekman"] = grouped_metrics(probs, data.targets, model.thresholds, groups, names)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / METRICS_FILE, report)
        write_per_class_csv(out / PER_CLASS_FILE, rows)
        write_per_class_csv(out / f"per_class_metrics_{split_name(split or data.path)}.csv", rows)
        if out.resolve() != Path(model.path).resolve():  # never overwrite the model's own config
            write_json(out / CONFIG_FILE, model.config)
    return report

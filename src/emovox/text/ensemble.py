"""Several text models' scores averaged: an ensemble folder, building one, and running it.

An ensemble folder holds ``inference_config.json`` (format ``emovox-text-ensemble``): ``members`` (each a
``path`` to a text model folder, relative to the ensemble's folder unless absolute, and a ``weight`` > 0),
the labels (every member's, in the same order), and its own decision rule: per-class ``thresholds`` and a
``global_threshold`` tuned on the weighted mean of the members' dev scores, ``top_k``, ``always_one``.
``labels.json`` and the metrics files sit beside it as in a single model's folder. Members load with the
backend asked for (each its own ONNX graph by default), so an ensemble needs no weights or graph of its own.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import TextDataset, TextModelError, read_tsv
from .evaluation import dataset_probabilities, evaluate_text_model
from .metrics import crossfit_macro_f1, tune_thresholds
from .model import (
    CONFIG_FILE,
    LABELS_FILE,
    META_FILE,
    TextModel,
    check_decision_rule,
    check_format,
    read_json,
    write_json,
)

ENSEMBLE_FORMAT = "emovox-text-ensemble"
ENSEMBLE_VERSION = 1


def is_ensemble_folder(root: Path) -> bool:
    """Whether ``root``'s config names the ensemble format (a missing or unreadable config: not one)."""
    try:
        cfg = read_json(root / CONFIG_FILE)
    except TextModelError:
        return False
    return isinstance(cfg, dict) and cfg.get("format") == ENSEMBLE_FORMAT


class TextEnsemble(TextModel):
    """The weighted mean of its members' sigmoid scores, decided with the ensemble's own thresholds."""

    def __init__(self, path: Path, config: dict, members: Sequence[TextModel]):
        super().__init__(path, config)
        self.members = list(members)
        self.weights = np.array([m["weight"] for m in config["members"]], dtype=np.float64)
        self.weights /= self.weights.sum()
        self.backend = "+".join(sorted({m.backend for m in self.members}))

    def __repr__(self) -> str:
        return f"TextEnsemble({str(self.path)!r}, members={[str(m.path) for m in self.members]})"

    @property
    def weights_path(self) -> Path:
        return Path(self.path) / CONFIG_FILE

    def probabilities(self, texts: Sequence[str], *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted mean scores; a text's token count is the largest over the members (their tokenizers
        differ) and it is truncated when any member truncated it."""
        outs = [m.probabilities(texts, batch_size=batch_size) for m in self.members]
        probs = sum(w * p for w, (p, _, _) in zip(self.weights, outs))
        n_tokens = np.max(np.stack([n for _, n, _ in outs]), 0)
        truncated = np.any(np.stack([t for _, _, t in outs]), 0)
        return probs, n_tokens, truncated


def member_paths(root: Path, cfg: dict) -> list[Path]:
    return [Path(m["path"]) if Path(m["path"]).is_absolute() else root / m["path"] for m in cfg["members"]]


def check_ensemble_config(cfg: Any, path: Path) -> None:
    """Every key :class:`TextEnsemble` reads, with its type and range: a :class:`TextModelError` naming it."""
    check_format(cfg, path, ENSEMBLE_FORMAT, ENSEMBLE_VERSION,
                 ("members", "labels", "thresholds", "global_threshold", "max_length"))
    members = cfg["members"]
    if not isinstance(members, list) or len(members) < 2 or not all(
            isinstance(m, dict) and isinstance(m.get("path"), str) and m["path"]
            and isinstance(m.get("weight"), (int, float)) and not isinstance(m["weight"], bool)
            and np.isfinite(m["weight"]) and m["weight"] > 0 for m in members):
        raise TextModelError(f"{path}: 'members' must list at least two objects with a 'path' (a text model "
                             "folder) and a 'weight' > 0")
    check_decision_rule(cfg, path)


def load_members(paths: Sequence[Path], load_member: Callable[[Path], TextModel], where: Path) -> list[TextModel]:
    """The members, loaded by ``load_member``: none an ensemble itself, all with the first one's labels."""
    for path in paths:
        if is_ensemble_folder(path):
            raise TextModelError(f"{where}: member {path} is itself an ensemble; list its members")
    members = [load_member(path) for path in paths]
    for path, member in zip(paths[1:], members[1:]):
        if list(member.labels) != list(members[0].labels):
            raise TextModelError(f"{path}: its labels differ from those of {paths[0]} ({where})")
    return members


def load_ensemble(root: Path, load_member: Callable[[Path], TextModel]) -> TextEnsemble:
    """An ensemble folder with each member loaded by ``load_member`` (which picks the backend)."""
    cfg = read_json(root / CONFIG_FILE)
    check_ensemble_config(cfg, root / CONFIG_FILE)
    if read_json(root / LABELS_FILE) != cfg["labels"]:
        raise TextModelError(f"{root / LABELS_FILE}: labels differ from those in {CONFIG_FILE}")
    members = load_members(member_paths(root, cfg), load_member, root / CONFIG_FILE)
    if list(members[0].labels) != cfg["labels"]:
        raise TextModelError(f"{root / CONFIG_FILE}: its labels differ from its members'")
    return TextEnsemble(root, cfg, members)


def build_ensemble(members: Sequence[str | os.PathLike], dev: str | os.PathLike, out_dir: str | os.PathLike, *,
                   load_member: Callable[[Path], TextModel], weights: Sequence[float] | None = None,
                   top_k: int | None = None, min_support: int = 5) -> dict:
    """Write an ensemble of ``members`` into ``out_dir``: thresholds tuned on the weighted mean of their scores on
    ``dev`` (a labelled TSV), the metrics files, and each member's own dev figures beside the ensemble's."""
    out = Path(out_dir)
    paths = [Path(m).resolve() for m in members]
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} members")
    models = load_members(paths, load_member, out)
    data = read_tsv(dev, len(models[0].labels))
    probs = [dataset_probabilities(m, data) for m in models]
    mean = sum(w * p for w, p in zip(weights, probs)) / sum(weights)
    thresholds, global_t = tune_thresholds(mean, data.targets, min_support=min_support)
    first = models[0]
    cfg = {
        "format": ENSEMBLE_FORMAT, "format_version": ENSEMBLE_VERSION, "task": "multi-label",
        "combine": "weighted mean of the members' sigmoid scores",
        "members": [{"path": os.path.relpath(p, out.resolve()), "weight": w} for p, w in zip(paths, weights)],
        "labels": list(first.labels), "max_length": max(m.max_length for m in models),
        "thresholds": {lab: float(t) for lab, t in zip(first.labels, thresholds)}, "global_threshold": global_t,
        "top_k": first.top_k if top_k is None else int(top_k), "always_one": first.always_one,
        "thresholds_tuned_on": {"path": str(data.path), "sha256": data.sha256, "n_examples": len(data)},
    }
    check_ensemble_config(cfg, out / CONFIG_FILE)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / LABELS_FILE, cfg["labels"])
    write_json(out / CONFIG_FILE, cfg)
    model = TextEnsemble(out, cfg, models)  # the members are already loaded and checked
    report = evaluate_text_model(model, data, out_dir=out, probs=mean, crossfit=True, split="dev")
    write_json(out / META_FILE, _meta(out, paths, models, probs, data, report))
    return report


def _meta(out: Path, paths: list[Path], models: list[TextModel], probs: list[np.ndarray], data: TextDataset, report: dict) -> dict:
    def member_f1(p: np.ndarray) -> dict:
        from sklearn.metrics import f1_score

        t, _ = tune_thresholds(p, data.targets)
        return {"dev_macro_f1_tuned": float(f1_score(data.targets, p >= t, average="macro", zero_division=0)),
                "dev_macro_f1_crossfit": crossfit_macro_f1(p, data.targets)}

    return {
        "name": "emovox text emotion ensemble (" + " + ".join(p.name for p in paths) + ")",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dev": {"path": str(data.path), "sha256": data.sha256, "n_examples": len(data),
                "use": "threshold tuning of the mean scores"},
        "members": [{"path": os.path.relpath(p, out.resolve()), "encoder": m.config.get("encoder", {}).get("name"), **member_f1(pr)}
                    for p, m, pr in zip(paths, models, probs)],
        "dev_macro_f1_tuned": report["per_class_thresholds"]["macro_f1"],
        "dev_macro_f1_crossfit": report["per_class_thresholds_crossfit"]["macro_f1"],
    }

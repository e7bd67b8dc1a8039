"""Label mapping and the split plan: which rows train, validate and test, and which labels each corpus can teach."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from emovox.data.labels import CANONICAL_ORDER, LabelMap, order_labels
from emovox.data.splits import (
    Split,
    speaker_folds,
    stratified_split,
    test_speaker_split,
    train_val_split,
)
from emovox.errors import TrainingError
from emovox.training.config import TrainConfig


def _canonical_order(labels) -> list[str]:
    labels = set(labels)
    return [lab for lab in CANONICAL_ORDER if lab in labels] + sorted(labels - set(CANONICAL_ORDER))


def spec_orders(spec: str | None) -> bool:
    """Whether a label spec gives the model's label order (a taxonomy or a list; merges alone do not)."""
    from emovox.data.labels import parse_label_spec

    return spec is not None and str(spec).strip() != "" and parse_label_spec(spec).target is not None


def map_labels(rows: Sequence[Any], spec: str | None) -> tuple[list[Any], list[str], dict[str, int], dict[str, str | None]]:
    """Apply a label spec to manifest rows.

    Returns the kept rows (relabelled), the model's labels (those present, in the order the spec
    gives, else by :func:`emovox.data.labels.order_labels`), the clips dropped per source label and the
    mapping used.
    """
    from emovox.data.labels import LabelError

    source = _canonical_order({r.label for r in rows})
    spec = None if spec is None or str(spec).strip() == "" else spec
    try:
        lm = LabelMap.build(source, spec)
        ordered = spec_orders(spec)
    except LabelError as e:
        raise TrainingError(f"--labels: {e}") from e
    mapping = {s: lm(s) for s in source}
    dropped = Counter(r.label for r in rows if mapping[r.label] is None)
    kept = [_relabel(r, mapping[r.label]) for r in rows if mapping[r.label] is not None]
    present = {r.label for r in kept}
    # a taxonomy or a list gives the order; otherwise the data's label set decides (a taxonomy's order
    # when it is exactly one's set, else the canonical order)
    order = [lab for lab in lm.target if lab in present] if ordered else order_labels(present)[0]
    if not kept:
        raise TrainingError(f"no clip left after mapping labels {source} to {spec!r}")
    if len(order) < 2:
        raise TrainingError(f"need at least 2 labels to train, the data has {order}")
    return kept, order, dict(dropped), mapping


def _relabel(row, label):
    if row.label == label:
        return row
    try:
        return replace(row, label=label)
    except TypeError:  # not a dataclass
        row = copy.copy(row)
        row.label = label
        return row


@dataclass
class SplitPlan:
    """Train/validation(/test) rows of one training run and how they were chosen."""

    train: list[Any]
    val: list[Any]
    test: list[Any]
    kind: str
    message: str
    val_message: str
    test_speakers: list[str] = field(default_factory=list)
    val_speakers: list[str] = field(default_factory=list)
    name: str = ""  # "fold_1", ... or ""

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "val_message": self.val_message,
                "test_speakers": self.test_speakers, "val_speakers": self.val_speakers, "sizes": self.sizes(),
                "name": self.name,  # the speakers trained on: emovox evaluate warns when it scores them
                "train_speakers": sorted({str(r.speaker) for r in self.train if getattr(r, "speaker", None)})}


def _pick(rows, idx):
    return [rows[i] for i in idx]


def _train_val(rows, cfg: TrainConfig) -> Split:
    if cfg.split == "stratified":
        return stratified_split(rows, cfg.val_split, seed=cfg.seed)
    return train_val_split(rows, cfg.val_split, seed=cfg.seed)


def plan_splits(rows: Sequence[Any], cfg: TrainConfig) -> list[SplitPlan]:
    """The runs to make: one (train/val, or train/val/test with test speakers) or one per fold."""
    rows = list(rows)
    outer: list[tuple[str, Split | None]]
    if cfg.test_speakers:
        outer = [("", test_speaker_split(rows, cfg.test_speakers))]
    elif cfg.folds:
        src = rows if cfg.split == "speaker" else [{"label": r.label, "speaker": None} for r in rows]
        folds = speaker_folds(src, cfg.folds, seed=cfg.seed)
        outer = [(f"fold_{i + 1}", s) for i, s in enumerate(folds) if cfg.fold is None or cfg.fold == i + 1]
    else:
        outer = [("", None)]
    plans = []
    for name, s in outer:
        if s is None:
            pool, test, kind, msg, test_spk = rows, [], None, "", []
        else:
            pool, test, kind, msg, test_spk = _pick(rows, s.train), _pick(rows, s.test), s.kind, s.message, list(
                s.test_speakers)
        tv = _train_val(pool, cfg)
        if kind is None:
            kind, msg = tv.kind, tv.message
        plans.append(SplitPlan(train=_pick(pool, tv.train), val=_pick(pool, tv.val), test=test, kind=kind,
                               message=msg, val_message=tv.message, test_speakers=test_spk,
                               val_speakers=list(tv.test_speakers), name=name))
    return plans


def _corpus_of(row) -> str:
    return getattr(row, "corpus", None) or "csv"  # rows without a corpus are one group with the CSV ones


def corpus_label_gaps(rows: Sequence[Any], labels: Sequence[str]) -> dict[str, list[str]]:
    """Per corpus of ``rows`` (in order of appearance), the ``labels`` that other rows have and its
    own rows do not. Labels no row has are nobody's gap."""
    seen: dict[str, set[str]] = {}
    for r in rows:
        seen.setdefault(_corpus_of(r), set()).add(r.label)
    union = set().union(*seen.values()) if seen else set()
    return {c: [lab for lab in labels if lab in union and lab not in have] for c, have in seen.items()}


def corpus_label_mask(rows: Sequence[Any], labels: Sequence[str]) -> torch.Tensor:
    """Additive loss mask ``(len(rows), len(labels))`` for ``label_scope="corpus"``: -inf where the
    row's corpus lacks the label (:func:`corpus_label_gaps`), 0 elsewhere. Added to the logits in
    the training loss only: a masked class gets no gradient from the clip, up or down. A row's own
    label is never masked, and with one corpus the mask is all zeros."""
    gaps = corpus_label_gaps(rows, labels)
    lacks = torch.tensor([[lab in gaps[_corpus_of(r)] for lab in labels] for r in rows], dtype=torch.bool)
    return torch.zeros(len(rows), len(labels)).masked_fill(lacks.view(len(rows), len(labels)), float("-inf"))


def label_scope_message(rows: Sequence[Any], labels: Sequence[str]) -> str:
    """One line on what ``label_scope="corpus"`` masks, e.g. ``crema-d lacks calm, surprised; ...``."""
    gaps = corpus_label_gaps(rows, labels)
    lacking = "; ".join(f"{c} lacks {', '.join(g)}" for c, g in sorted(gaps.items()) if g)
    if lacking:
        return f"label scope corpus: {lacking}"
    return f"label scope corpus: every corpus ({', '.join(sorted(gaps))}) has every label; the loss is unchanged"

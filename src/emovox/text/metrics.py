"""Multi-label metrics, threshold tuning and the decision rule.

Decision rule (the same in metrics and at inference): label ``c`` is predicted when its
sigmoid score ``p_c >= threshold_c``. ``top_k`` (when > 0) keeps at most the ``k`` highest of
those; with ``always_one`` a text whose scores are all below threshold gets its top label
(every GoEmotions example has at least one label, ``neutral`` included).

Per-class thresholds maximise each label's F1 on the tuning split over a 0.01..0.99 grid
(the F1 curve is smoothed over ±0.02 first so a threshold does not sit on a spike made by one
or two examples); labels with fewer than ``min_support`` positives there fall back to the
global threshold, which is the single value that maximises macro-F1.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)


def decide(probs: np.ndarray, thresholds: np.ndarray | float, *, top_k: int = 0,
           always_one: bool = False) -> np.ndarray:
    """Boolean ``(n, n_labels)`` predictions under the decision rule above."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    pred = probs >= np.asarray(thresholds, dtype=np.float64)
    if top_k and top_k > 0 and top_k < probs.shape[1]:
        rank = np.argsort(-probs, axis=1, kind="stable")
        keep = np.zeros_like(pred)
        np.put_along_axis(keep, rank[:, :top_k], True, axis=1)
        pred &= keep
    if always_one:
        empty = ~pred.any(1)
        pred[empty, probs[empty].argmax(1)] = True
    return pred


def _f1_curves(probs: np.ndarray, targets: np.ndarray, grid: np.ndarray = GRID) -> np.ndarray:
    """F1 of every label at every grid threshold: ``(len(grid), n_labels)``."""
    pos = targets.astype(bool)
    curves = np.zeros((len(grid), probs.shape[1]))
    for g, t in enumerate(grid):
        pred = probs >= t
        tp = (pred & pos).sum(0)
        fp = (pred & ~pos).sum(0)
        fn = (~pred & pos).sum(0)
        denom = 2 * tp + fp + fn
        curves[g] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return curves


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, *, min_support: int = 5,
                    smooth: int = 2) -> tuple[np.ndarray, float]:
    """Per-class thresholds and the global (macro-F1-maximising) threshold."""
    probs, targets = np.asarray(probs), np.asarray(targets)
    curves = _f1_curves(probs, targets)
    global_t = float(GRID[int(np.argmax(curves.mean(1)))])
    if smooth:
        kernel = np.ones(2 * smooth + 1) / (2 * smooth + 1)
        padded = np.pad(curves, ((smooth, smooth), (0, 0)), mode="edge")
        curves = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(curves.shape[1])], 1)
    support = targets.sum(0)
    thresholds = np.full(probs.shape[1], global_t)
    for c in range(probs.shape[1]):
        if support[c] >= min_support:
            best = curves[:, c].max()
            ties = np.flatnonzero(curves[:, c] >= best - 1e-12)
            thresholds[c] = GRID[ties[np.argmin(np.abs(GRID[ties] - global_t))]]  # ties: nearest global
    return thresholds, global_t


def _prf(pred: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import precision_recall_fscore_support

    out = {}
    for avg in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(targets, pred, average=avg, zero_division=0)
        out.update({f"{avg}_f1": float(f), f"{avg}_precision": float(p), f"{avg}_recall": float(r)})
    from sklearn.metrics import accuracy_score

    out["exact_match"] = float(accuracy_score(targets, pred))
    return out


def auroc(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per-class AUROC (NaN where a label has no positives or no negatives), macro and micro."""
    from sklearn.metrics import roc_auc_score

    per = np.full(probs.shape[1], np.nan)
    for c in range(probs.shape[1]):
        if 0 < targets[:, c].sum() < len(targets):
            per[c] = roc_auc_score(targets[:, c], probs[:, c])
    macro = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
    micro = float(roc_auc_score(targets.ravel(), probs.ravel())) if 0 < targets.sum() < targets.size else float("nan")
    return per, macro, micro


def crossfit_macro_f1(probs: np.ndarray, targets: np.ndarray, *, seed: int = 0, folds: int = 2,
                      min_support: int = 5) -> float:
    """Macro-F1 with per-class thresholds tuned on other folds of the same split.

    Thresholds tuned and scored on the same data flatter the score; this estimates what they
    give on unseen text (each fold scored with thresholds tuned on the rest, predictions pooled).
    """
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(probs)) % folds
    pred = np.zeros_like(targets, dtype=bool)
    for k in range(folds):
        t, _ = tune_thresholds(probs[fold != k], targets[fold != k], min_support=min_support)
        pred[fold == k] = probs[fold == k] >= t
    return float(f1_score(targets, pred, average="macro", zero_division=0))


def evaluate(probs: np.ndarray, targets: np.ndarray, labels: Sequence[str], *, thresholds: np.ndarray,
             global_threshold: float, top_k: int, always_one: bool) -> tuple[dict, list[dict]]:
    """Overall metrics (per-class thresholds, global threshold, inference rule) and per-class rows."""
    from sklearn.metrics import precision_recall_fscore_support

    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(int)
    per_auc, auc_macro, auc_micro = auroc(probs, targets)
    pred_pc = decide(probs, thresholds)
    pred_gl = decide(probs, global_threshold)
    pred_rule = decide(probs, thresholds, top_k=top_k, always_one=always_one)
    overall = {
        "n_examples": int(len(probs)),
        "n_labels": len(labels),
        "auroc_macro": auc_macro,
        "auroc_micro": auc_micro,
        "per_class_thresholds": _prf(pred_pc, targets),
        "global_threshold": {"threshold": float(global_threshold), **_prf(pred_gl, targets)},
        "inference_rule": {"top_k": int(top_k), "always_one": bool(always_one), **_prf(pred_rule, targets)},
    }
    p, r, f, s = precision_recall_fscore_support(targets, pred_pc, average=None, zero_division=0)
    _, _, fg, _ = precision_recall_fscore_support(targets, pred_gl, average=None, zero_division=0)
    rows = [{"label": lab, "support": int(s[c]), "threshold": float(thresholds[c]), "precision": float(p[c]),
             "recall": float(r[c]), "f1": float(f[c]), "f1_global_threshold": float(fg[c]),
             "auroc": None if np.isnan(per_auc[c]) else float(per_auc[c])}
            for c, lab in enumerate(labels)]
    return overall, rows


def grouped_metrics(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray,
                    groups: Sequence[Sequence[int]], names: Sequence[str]) -> dict:
    """Metrics after grouping (e.g. Ekman): a group is true/predicted when any member is."""
    t = np.stack([targets[:, list(g)].any(1) for g in groups], 1).astype(int)
    pred = decide(probs, thresholds)
    pr = np.stack([pred[:, list(g)].any(1) for g in groups], 1).astype(int)
    scores = np.stack([probs[:, list(g)].max(1) for g in groups], 1)
    _, macro, micro = auroc(scores, t)
    return {"labels": list(names), "rule": "group score = max over members; group predicted when any "
            "member is above its threshold", "auroc_macro": macro, "auroc_micro": micro, **_prf(pr, t)}


def write_per_class_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)) for k, v in row.items()})

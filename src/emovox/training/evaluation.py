"""Metrics, calibration, confusion matrices, reports and plots; evaluate any model on any corpus.

Reported metrics (speaker-independent splits, see DESIGN.md): accuracy, UAR (unweighted average
recall: the mean of per-class recalls over the classes present in the ground truth), macro-F1
(mean F1 over those same classes), weighted-F1 (F1 weighted by support) and the expected
calibration error (ECE, 15 equal-width confidence bins, top label).

Artifacts written by :func:`write_report` (names from the text and audio evaluation kit): ``metrics_overall.json``,
``metrics_report.csv``, ``confusion_matrix.npy`` (rows: true, columns: predicted, in
``labels`` order), ``confusion_matrix_counts.png`` (also as ``confusion_matrix.png``),
``confusion_matrix_rownorm.png``; and by :func:`evaluate_model`, when evaluating into a folder
that is not the model's own, ``labels.json`` and ``model_meta.json`` (what was evaluated on what).
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emovox.data.cache import BatchMaker, FeatureCache, length_batches, load_features
from emovox.data.labels import LabelMap
from emovox.models.common import is_streaming

ECE_BINS = 15


# ---------------------------------------------------------------------------------------------
# Metrics


def _as_indices(y: Sequence, labels: Sequence[str]) -> np.ndarray:
    y = list(y)
    if y and isinstance(y[0], str):
        index = {lab: i for i, lab in enumerate(labels)}
        try:
            return np.array([index[v] for v in y], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"label {e.args[0]!r} is not one of {list(labels)}") from None
    return np.asarray(y, dtype=np.int64).reshape(-1)


def confusion_matrix(y_true: Sequence, y_pred: Sequence, labels: Sequence[str]) -> np.ndarray:
    """``(n, n)`` counts, rows true labels, columns predicted labels, in ``labels`` order (scikit-learn's)."""
    from sklearn import metrics

    n = len(labels)
    t, p = _as_indices(y_true, labels), _as_indices(y_pred, labels)
    if not n or not len(t):  # scikit-learn refuses empty input
        return np.zeros((n, n), dtype=np.int64)
    return metrics.confusion_matrix(t, p, labels=np.arange(n)).astype(np.int64)


def compute_metrics(y_true: Sequence, y_pred: Sequence, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, UAR, macro-F1, weighted-F1 and per-class precision/recall/F1/support (scikit-learn's).

    ``y_true``/``y_pred`` are label names or indices into ``labels``. Classes absent from
    ``y_true`` are listed (support 0) but left out of UAR and macro-F1: UAR is the mean recall over the
    classes present, i.e. scikit-learn's ``balanced_accuracy_score``.
    """
    from sklearn import metrics

    labels = list(labels)
    cm = confusion_matrix(y_true, y_pred, labels)
    t, p = _as_indices(y_true, labels), _as_indices(y_pred, labels)
    if len(t):
        precision, recall, f1, support = metrics.precision_recall_fscore_support(
            t, p, labels=np.arange(len(labels)), zero_division=0)
    else:
        precision = recall = f1 = np.zeros(len(labels))
        support = np.zeros(len(labels), dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    present = support > 0
    n = int(support.sum())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "uar": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / n) if n else 0.0,
        "labels": labels,
        "per_class": {lab: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                            "support": int(support[i])} for i, lab in enumerate(labels)},
        "confusion_matrix": cm.tolist(),
    }


def expected_calibration_error(probs: np.ndarray | torch.Tensor, y_true: Sequence[int], *, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - confidence| x bin share."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll_temperature(logits: np.ndarray, y_true: Sequence[int], *, max_iter: int = 200) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` (LBFGS on log T; Guo et al. 2017);
    1.0 when the optimum is not finite or outside [0.01, 100]."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y_true), dtype=torch.long)
    if len(y) == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if np.isfinite(t) and 0.01 <= t <= 100 else 1.0


def nll_quality_temperature(logits: np.ndarray, y_true: Sequence[int], flags: np.ndarray, *,
                            max_iter: int = 200) -> tuple[float, np.ndarray]:
    """A temperature T and a factor per quality issue minimising the NLL of ``softmax(logits / (T * prod(factors
    of the clip's issues)))``: ``flags`` is a boolean ``(n, n_issues)`` (``emovox.degrade.quality.QUALITY_KINDS``
    order). LBFGS on the logs; an issue no clip has keeps factor 1; factors are clipped to the range a model
    file accepts (``QUALITY_FACTOR_RANGE``). Returns ``(T, factors)``."""
    from emovox.degrade.quality import QUALITY_FACTOR_RANGE

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y_true), dtype=torch.long)
    f = torch.as_tensor(np.asarray(flags), dtype=torch.float64)
    logs = torch.zeros(1 + f.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logs], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        t = torch.exp(logs[0] + f @ logs[1:])
        loss = nn.functional.cross_entropy(z / t[:, None], y)
        loss.backward()
        return loss

    opt.step(closure)
    t, factors = float(logs[0].detach().exp()), logs[1:].detach().exp().numpy()
    if not (np.isfinite(t) and 0.01 <= t <= 100):
        return nll_temperature(logits, y_true, max_iter=max_iter), np.ones(f.shape[1])
    return t, np.clip(np.nan_to_num(factors, nan=1.0), *QUALITY_FACTOR_RANGE)


def fit_temperature(logits: np.ndarray, y_true: Sequence[int], *, max_iter: int = 200) -> float:
    """The NLL-optimal temperature (:func:`nll_temperature`), kept only where it does not raise the top-label
    ECE on the same clips; otherwise 1.0. On small validation sets the NLL optimum can over-sharpen (one
    run: T = 0.094 took ECE from 0.061 to 0.383), so calibration must never make the reported ECE worse."""
    t = nll_temperature(logits, y_true, max_iter=max_iter)
    if t == 1.0 or len(y_true) == 0:
        return 1.0
    before = expected_calibration_error(softmax(logits), y_true)
    after = expected_calibration_error(softmax(logits, t), y_true)
    return t if after <= before else 1.0


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no global pyplot state)


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, out: str | os.PathLike) -> Path:
    from emovox.atomic import write_file

    out = Path(out)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    write_file(out, lambda t: Path(t).write_bytes(buf.getvalue()))
    return out


def plot_confusion(cm: np.ndarray, labels: Sequence[str], out: str | os.PathLike, normalize: str = "none",
                   *, title: str | None = None) -> Path:
    """Render a confusion matrix (rows true, columns predicted) as a PNG; ``normalize`` 'none' or 'row'."""
    if normalize not in ("none", "row"):
        raise ValueError(f"normalize must be 'none' or 'row', got {normalize!r}")
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    if cm.shape[0] != len(labels):
        raise ValueError(f"confusion matrix is {cm.shape[0]}x{cm.shape[1]} but {len(labels)} labels were given")
    if normalize == "row":
        rows = cm.sum(axis=1, keepdims=True)
        shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    else:
        shown = cm
    n = len(labels)
    fig = _figure((1.2 + 0.75 * n, 1.0 + 0.7 * n))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize == "row" else max(1.0, shown.max()))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize == "row" else "confusion matrix (counts)"))
    hi = shown.max() if shown.size else 0
    for i in range(n):
        for j in range(n):
            v = shown[i, j]
            txt = f"{v:.2f}" if normalize == "row" else f"{int(round(v))}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="white" if v > 0.6 * hi else "black")
    return _save_png(fig, out)


def plot_training_curves(history: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Loss (train, validation) and validation UAR/accuracy/macro-F1 per epoch."""
    epochs = [h["epoch"] for h in history]
    fig = _figure((10, 4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    if history and "val_loss" in history[0]:
        ax1.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    for key, name in (("val_uar", "validation UAR"), ("val_accuracy", "validation accuracy"),
                      ("val_macro_f1", "validation macro-F1")):
        ax2.plot(epochs, [h[key] for h in history], label=name)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    return _save_png(fig, out)


# ---------------------------------------------------------------------------------------------
# Reports


def _save_npy(path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def write_report(out_dir: str | os.PathLike, metrics: dict[str, Any], *, title: str | None = None,
                 plots: bool = True) -> Path:
    """Write ``metrics_overall.json``, ``metrics_report.csv``, ``confusion_matrix.npy``/``.png``/``_rownorm.png``.

    ``metrics`` is :func:`compute_metrics`'s dict plus anything else to record (kept in the JSON).
    """
    from emovox.atomic import write_file, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = metrics["labels"]
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    overall = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}
    write_json(out / "metrics_overall.json", overall)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "precision", "recall", "f1", "support"])
    for lab in labels:
        pc = metrics["per_class"][lab]
        w.writerow([lab, f"{pc['precision']:.4f}", f"{pc['recall']:.4f}", f"{pc['f1']:.4f}", pc["support"]])
    n = metrics["n"]
    w.writerow(["accuracy", "", "", f"{metrics['accuracy']:.4f}", n])
    w.writerow(["macro avg (UAR = recall)", "", f"{metrics['uar']:.4f}", f"{metrics['macro_f1']:.4f}", n])
    w.writerow(["weighted avg", "", "", f"{metrics['weighted_f1']:.4f}", n])
    write_file(out / "metrics_report.csv", lambda t: Path(t).write_text(buf.getvalue()))
    write_file(out / "confusion_matrix.npy", lambda t: _save_npy(t, cm))
    if plots:
        counts = plot_confusion(cm, labels, out / "confusion_matrix_counts.png", "none", title=title)
        write_file(out / "confusion_matrix.png", lambda t: Path(t).write_bytes(counts.read_bytes()))
        plot_confusion(cm, labels, out / "confusion_matrix_rownorm.png", "row",
                       title=title and f"{title} (row-normalised)")
    return out


def evaluation_meta(loaded_model, metrics: dict[str, Any]) -> dict[str, Any]:
    """The text and audio evaluation kit's ``model_meta.json`` for an evaluation: model, classes, data, seed, date, notes."""
    import json
    from datetime import datetime, timezone

    from emovox import __version__

    try:  # the model's own provenance, when it has readable one
        trained = json.loads((Path(loaded_model.path) / "model_meta.json").read_text())
    except (OSError, ValueError):
        trained = {}
    trained = trained if isinstance(trained, dict) else {}
    return {
        "model_name": Path(loaded_model.path).name,
        "model_path": str(loaded_model.path),
        "architecture": loaded_model.model_config.model.name,
        "classes": list(metrics["labels"]),
        "model_labels": list(metrics["model_labels"]),
        "dataset": {"corpora": metrics["corpora"], "n_clips": metrics["n"], "n_dropped": metrics["n_dropped"],
                    "n_unreadable": metrics["n_unreadable"]},
        "seed": trained.get("seed"),
        "trained": {k: trained.get(k) for k in ("date", "emovox_version", "best_epoch")} if trained else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "emovox_version": __version__,
        "notes": "evaluation written by emovox evaluate: metrics in metrics_overall.json and metrics_report.csv, "
                 "confusion matrix (rows true, columns predicted, in labels.json order) in confusion_matrix.npy",
    }


# ---------------------------------------------------------------------------------------------
# Running a model over cached features


def forward_model(model: nn.Module, feats: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Normalised features ``(B, F, T)`` → logits, for frame and streaming (LSTM) models alike."""
    if is_streaming(model):  # same logits as head_logits' packed sequences, much faster on CPU
        return model.padded_logits(feats.transpose(1, 2), lengths)
    return model(feats, lengths)


@torch.no_grad()
def predict_logits(model: nn.Module, batches: BatchMaker, features: Sequence[np.ndarray], *,
                   batch_size: int = 32) -> np.ndarray:
    """Logits ``(n, n_classes)`` for cached log-mel clips, batched by length, model in eval mode."""
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    lengths = [f.shape[-1] for f in features]
    device = next(model.parameters()).device
    for idx in length_batches(lengths, batch_size):
        feats, lens = batches.eval_batch([features[i] for i in idx])
        feats = feats.to(device)
        lens = lens.to(device) if lens is not None else None
        logits = forward_model(model, feats, lens).float().cpu().numpy()
        if out is None:
            out = np.zeros((len(features), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    model.train(was_training)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


@dataclass
class Evaluation:
    """What :func:`evaluate_model` found: metrics (the JSON written) and the raw arrays."""

    metrics: dict[str, Any]
    labels: list[str]  # labels scored: the model's labels present in the (mapped) corpus, model order
    logits: np.ndarray  # (n, len(model labels)) for the evaluated clips
    y_true: np.ndarray  # indices into ``labels``
    y_pred: np.ndarray  # indices into ``labels`` (argmax over ``labels`` only)
    rows: list[Any]  # the evaluated rows
    dropped: dict[str, int] = field(default_factory=dict)  # corpus label -> clips left out (not expressible)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, why) for unreadable clips


def evaluate_model(loaded_model, rows: Sequence[Any], out_dir: str | os.PathLike | None = None, *,
                   batch_size: int = 32, cache: FeatureCache | str | os.PathLike | bool | None = None,
                   num_workers: int | None = None, progress: bool | None = None,
                   labels: str | Sequence[str] | dict[str, str] | None = None) -> Evaluation:
    """Evaluate a loaded model folder (:func:`emovox.modelio.load_model_dir`) on manifest rows.

    Corpus labels are mapped to the model's (``calm``→``neutral`` when the model has no ``calm``;
    ``labels`` may give extra merges such as ``{"disgust": "angry"}``); clips whose label the
    model cannot express are left out and counted in ``dropped``. Predictions take the argmax over
    the model labels present in the mapped corpus only. Features come from ``cache`` (see
    :func:`emovox.data.cache.load_features`); the model's own temperature calibrates probabilities.
    """
    pipeline = loaded_model.pipeline
    model_labels = list(pipeline.labels)
    corpus_labels = sorted({r.label for r in rows})
    if isinstance(labels, dict) or (isinstance(labels, str) and "=" in labels):
        user = LabelMap.build(corpus_labels, labels)
        relabel = {s: user(s) for s in corpus_labels}
    else:
        relabel = {s: s for s in corpus_labels}
    to_model = LabelMap.build(sorted({v for v in relabel.values() if v}), model_labels)
    mapping = {s: (to_model(relabel[s]) if relabel[s] else None) for s in corpus_labels}
    dropped = Counter(r.label for r in rows if mapping[r.label] is None)
    kept = [r for r in rows if mapping[r.label] is not None]
    if not kept:
        raise ValueError(
            f"none of the corpus labels ({', '.join(corpus_labels)}) can be expressed by the model's labels "
            f"({', '.join(model_labels)})"
        )
    present = [lab for lab in model_labels if lab in {mapping[r.label] for r in kept}]
    cfg = pipeline.feature_config
    if cfg.kind == "waveform":  # raw-sample models (ssl): cached backbone states or waveforms, their own batches
        from emovox.data.backbone_data import evaluation_data

        fs, batches = evaluation_data(pipeline.model, kept, cache=cache, num_workers=num_workers, progress=progress)
    else:
        fs = load_features(kept, cfg, cache=cache, num_workers=num_workers, progress=progress, desc="evaluate")
        batches = BatchMaker(cfg, pipeline.normalize)  # the model's own statistics
    if not fs.features:
        raise ValueError(f"no clip could be read ({len(fs.errors)} errors; first: {fs.errors[0][1] if fs.errors else ''})")
    logits = predict_logits(pipeline.model, batches, fs.features, batch_size=batch_size)
    cols = [model_labels.index(lab) for lab in present]
    sub = logits[:, cols]
    y_true = np.array([present.index(mapping[r.label]) for r in fs.rows], dtype=np.int64)
    y_pred = sub.argmax(axis=1)
    temperature = pipeline.model_config.temperature
    metrics = compute_metrics(y_true, y_pred, present)
    metrics.update({
        "ece": expected_calibration_error(softmax(sub), y_true),
        "ece_calibrated": expected_calibration_error(softmax(sub, temperature), y_true),
        "temperature": temperature,
        "model": str(loaded_model.path),
        "model_labels": model_labels,
        "label_mapping": {s: mapping[s] for s in corpus_labels},
        "dropped_unexpressible": dict(sorted(dropped.items())),
        "n_dropped": int(sum(dropped.values())),
        "n_unreadable": len(fs.errors),
        "corpora": sorted({getattr(r, "corpus", "?") for r in fs.rows}),
    })
    if out_dir is not None:
        from emovox.atomic import write_json

        write_report(out_dir, metrics)
        if Path(out_dir).resolve() != Path(loaded_model.path).resolve():  # never touch the model's own files
            write_json(Path(out_dir) / "labels.json", present)
            write_json(Path(out_dir) / "model_meta.json", evaluation_meta(loaded_model, metrics))
    return Evaluation(metrics=metrics, labels=present, logits=logits, y_true=y_true, y_pred=y_pred,
                      rows=list(fs.rows), dropped=dict(dropped), errors=fs.errors)

"""Closed-form fitting of a linear probe head on pooled encoder states (``--ssl-head mean|stats`` with ``--probe-fit``)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from emovox.errors import TrainingError
from emovox.training.config import TrainConfig
from emovox.training.evaluation import (
    compute_metrics,
)


def fit_linear_probe(hooks, sets, y, labels, cfg: TrainConfig, say) -> tuple[list[dict[str, Any]], float, int]:
    """Fit a probe head of ``--model ssl`` (``mean``/``stats``: standardised per-layer time statistics → one linear
    layer) as what it is, a
    multinomial logistic regression: scikit-learn's L-BFGS to the optimum for each inverse L2 strength C,
    class-balanced unless ``class_balance`` is "none", keeping the C with the best validation UAR.

    Returns the history (one entry per C, in the place of epochs), the best validation UAR and its entry
    number; the model holds the best fit. Labels without training clips get a -30 bias (never predicted)."""
    from sklearn.linear_model import LogisticRegression

    from emovox.models.ssl import PROBE_C

    model_head = hooks.model.head_kind
    if cfg.label_scope != "all":
        raise TrainingError(f"--label-scope corpus needs a loss trained by epochs; the {model_head!r} head is fit as a "
                            "linear probe over all labels: leave --label-scope at 'all'")
    model, n = hooks.model, len(labels)
    # --augment: the degraded copies' pooled rows join the clean ones (their standardisation was fit on the mix)
    train_rows, y_fit = hooks.pooled_train(sets["train"], y["train"])
    x = {"train": model.standardise(train_rows), "val": model.standardise(hooks.pooled(sets["val"]))}
    y = {"train": y_fit, "val": y["val"]}
    say(f"{model_head!r} head: a linear probe on {x['train'].shape[1]} pooled features, fit by L-BFGS for each C "
        f"(--epochs, --lr, --crop-seconds and --mixup do not apply)")
    history, fits = [], []
    for i, c in enumerate(cfg.probe_c or PROBE_C):
        t = time.perf_counter()
        clf = LogisticRegression(C=c, max_iter=5000, class_weight=None if cfg.class_balance == "none" else "balanced")
        clf.fit(x["train"], y["train"])
        weight, bias = np.zeros((n, x["train"].shape[1])), np.full(n, -30.0)
        coef, intercept = (clf.coef_, clf.intercept_) if len(clf.classes_) > 2 else \
            (np.concatenate([0 * clf.coef_, clf.coef_]), np.concatenate([0 * clf.intercept_, clf.intercept_]))
        weight[clf.classes_], bias[clf.classes_] = coef, intercept
        logits = {part: x[part] @ weight.T + bias for part in x}
        loss = {part: float(F.cross_entropy(torch.from_numpy(logits[part]), torch.from_numpy(y[part]))) for part in x}
        vm = compute_metrics(y["val"], logits["val"].argmax(1), labels)
        history.append({"epoch": i + 1, "C": c, "train_loss": loss["train"],
                        "train_accuracy": float(np.mean(logits["train"].argmax(1) == y["train"])),
                        "val_loss": loss["val"], "val_uar": vm["uar"], "val_accuracy": vm["accuracy"],
                        "val_macro_f1": vm["macro_f1"], "val_weighted_f1": vm["weighted_f1"], "lr": 0.0,
                        "iterations": int(np.max(clf.n_iter_)), "time_s": time.perf_counter() - t})
        fits.append((weight, bias))
        say(f"C={c:g}: loss {loss['train']:.4f}, val loss {loss['val']:.4f}, val UAR {vm['uar']:.4f}, "
            f"acc {vm['accuracy']:.4f}, macro-F1 {vm['macro_f1']:.4f}, {history[-1]['time_s']:.1f} s")
    best = max(range(len(history)), key=lambda j: history[j]["val_uar"])  # the first of equals: the stronger L2
    model.set_linear(*fits[best])
    say(f"kept C={history[best]['C']:g} (validation UAR {history[best]['val_uar']:.4f})")
    return history, history[best]["val_uar"], best + 1

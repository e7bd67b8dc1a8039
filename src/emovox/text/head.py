"""The multi-label head: standardise the sentence vector, then an MLP to one logit per label."""

from __future__ import annotations

import torch
from torch import nn


class MLPHead(nn.Module):
    """``(batch, input_dim)`` sentence vectors → ``(batch, n_labels)`` logits (sigmoid outside).

    ``mean``/``std`` (fitted on the training vectors) are buffers saved with the weights.
    ``hidden_dim=0`` gives a linear head.
    """

    def __init__(self, input_dim: int, n_labels: int, *, hidden_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.input_dim, self.n_labels, self.hidden_dim, self.dropout = input_dim, n_labels, hidden_dim, dropout
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        if hidden_dim:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(input_dim, hidden_dim), nn.GELU(),
                                     nn.Dropout(dropout), nn.Linear(hidden_dim, n_labels))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(input_dim, n_labels))

    def config(self) -> dict:
        return {"input_dim": self.input_dim, "n_labels": self.n_labels, "hidden_dim": self.hidden_dim,
                "dropout": self.dropout}

    def fit_standardizer(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.mean.copy_(x.mean(0))
            self.std.copy_(x.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, *, kind: str = "bce",
                    pos_weight: torch.Tensor | None = None, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid BCE (optionally ``pos_weight``-ed per label) or focal loss (Lin et al. 2017)."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    if kind == "bce":
        return bce.mean()
    if kind == "focal":
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        return ((1 - p_t) ** gamma * bce).mean()
    raise ValueError(f"unknown loss {kind!r}; accepted: bce, focal")

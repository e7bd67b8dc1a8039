"""Seed 000's tiny mobile model: log-mel ``(batch, 64, frames)`` → 3 Conv1d blocks → global
average pooling → fully connected layers. About 50K parameters (~200 KB as float32)."""

from __future__ import annotations

import torch
from torch import nn

from . import register
from .common import masked_mean, scale_lengths


@register("cnn")
class TinyCNN(nn.Module):
    streaming = False

    def __init__(self, n_features: int = 64, n_classes: int = 5, *, channels: tuple[int, ...] = (64, 64, 96),
                 hidden: int = 64, dropout: float = 0.3):
        super().__init__()
        self.kwargs = {"channels": list(channels), "hidden": hidden, "dropout": dropout}
        blocks, cin = [], n_features
        for cout in channels:
            blocks += [nn.Conv1d(cin, cout, 3, padding=1), nn.BatchNorm1d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool1d(2, ceil_mode=True), nn.Dropout(dropout * 0.5)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, n_classes))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        t_in = feats.shape[-1]
        h = self.blocks(feats)
        return self.head(masked_mean(h, scale_lengths(lengths, t_in, h.shape[-1])))

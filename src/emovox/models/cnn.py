"""The Core ML mobile CNN's tiny mobile model: log-mel ``(batch, 64, frames)`` → 3 Conv1d blocks → global
average pooling → fully connected layers. About 50K parameters (~200 KB as float32)."""

from __future__ import annotations

import torch
from torch import nn

from emovox.models import register
from emovox.models.common import masked_mean, zero_padding


@register("cnn")
class TinyCNN(nn.Module):
    streaming = False

    def __init__(self, n_features: int = 64, n_classes: int = 5, *, channels: tuple[int, ...] = (64, 64, 96),
                 hidden: int = 64, dropout: float = 0.3):
        super().__init__()
        self.kwargs = {"channels": list(channels), "hidden": hidden, "dropout": dropout}
        blocks, cin = [], n_features
        for cout in channels:
            blocks.append(nn.Sequential(nn.Conv1d(cin, cout, 3, padding=1), nn.BatchNorm1d(cout), nn.ReLU()))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool1d(2, ceil_mode=True)
        self.drop = nn.Dropout(dropout * 0.5)
        self.head = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, n_classes))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # Frames past ``lengths`` are zeroed at the input and after each block (post-ReLU, so the
        # max-pool is unaffected): a clip gives the same logits alone or zero-padded in a batch.
        h = zero_padding(feats, lengths)
        for block in self.blocks:
            h = zero_padding(block(h), lengths)
            h = self.drop(self.pool(h))
            lengths = None if lengths is None else torch.div(lengths + 1, 2, rounding_mode="floor")
        return self.head(masked_mean(h, lengths))

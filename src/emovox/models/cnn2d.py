"""The Keras backend CNN's 2-D CNN, in PyTorch: the spectrogram as an image ``(batch, 1, n_features, frames)``
→ 3 × (Conv2D 3×3, batch norm, ReLU, 2×2 max pool) → global average pooling → 2 dense layers
with dropout → logits (softmax applied by the caller). About 110K parameters with the defaults.

Padding-safe: with ``lengths``, a clip padded in a batch gives the logits it gives alone.
"""

from __future__ import annotations

import torch
from torch import nn

from emovox.models import register
from emovox.models.blocks import masked_mean_2d, masked_sequential


@register("cnn2d")
class CNN2D(nn.Module):
    streaming = False

    def __init__(self, n_features: int = 64, n_classes: int = 5, *, channels: tuple[int, ...] = (32, 64, 128),
                 hidden: tuple[int, ...] = (128, 64), dropout: float = 0.3):
        super().__init__()
        self.kwargs = {"channels": list(channels), "hidden": list(hidden), "dropout": dropout}
        layers: list[nn.Module] = []
        cin = 1
        for cout in channels:
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            cin = cout
        self.blocks = nn.Sequential(*layers)
        head: list[nn.Module] = []
        for h in hidden:
            head += [nn.Linear(cin, h), nn.ReLU(), nn.Dropout(dropout)]
            cin = h
        head.append(nn.Linear(cin, n_classes))
        self.head = nn.Sequential(*head)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``feats``: normalised ``(batch, n_features, frames)``; ``lengths``: real frames per clip."""
        h, lengths = masked_sequential(self.blocks, feats.unsqueeze(1), lengths)
        return self.head(masked_mean_2d(h, lengths))

"""A small depthwise-separable 1-D CNN for bulk work and small devices (the shipped ``fast`` model).

``(batch, n_mels, frames)`` log-mel (the ``logmel64h20`` preset: 25 ms windows every 20 ms, 64 bands;
the mel bands are the input channels) → a 1-D convolution over time (``channels[0]``, kernel
``kernel``) → one depthwise-separable block per further entry of ``channels`` (a depthwise
convolution over time with that block's stride from ``strides``, then a 1×1 convolution to the next
width; batch norm and ReLU after each) → attentive statistics pooling (mean and standard deviation
under a softmax attention over the real frames) → dropout → linear logits.

A temporal CNN like TC-ResNet (Choi et al. 2019): convolving over time with the whole spectrum as
channels keeps activations small (about 16K values per clip at the stem for 3 s, against 84K for a
2-D stem on the same log-mel and 330K in the CRNN), and that, not arithmetic, is what a CPU pays for
in a network this size. With the defaults: about 90K parameters and ~8 MMAC for 3 s of audio (the
CRNN: 270K and ~100 MMAC). No recurrence, so it traces, exports (ONNX, Core ML, TorchScript) and
batches cleanly. Padding-safe: every convolution is masked (:func:`emovox.models.blocks.
masked_sequential`) and the pooling ignores padded frames, so a clip gives the same logits alone or
padded in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from emovox.models import register
from emovox.models.blocks import AttentiveStatsPool, masked_sequential


@register("fast")
class FastCNN(nn.Module):
    streaming = False

    def __init__(self, n_features: int = 64, n_classes: int = 5, *, channels: Sequence[int] = (96, 128, 128, 160),
                 strides: Sequence[int] = (2, 2, 1), kernel: int = 5, attention_dim: int = 64, dropout: float = 0.3):
        super().__init__()
        channels, strides = [int(c) for c in channels], [int(s) for s in strides]
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise ValueError(f"fast needs a stem width and one stride per block: channels {channels}, "
                             f"strides {strides} (len(strides) must be len(channels) - 1)")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"fast kernel must be an odd number of frames, got {kernel}")
        self.kwargs = {"channels": channels, "strides": strides, "kernel": kernel, "attention_dim": attention_dim,
                       "dropout": dropout}
        pad = kernel // 2
        layers: list[nn.Module] = [nn.Conv1d(n_features, channels[0], kernel, padding=pad, bias=False),
                                   nn.BatchNorm1d(channels[0]), nn.ReLU(inplace=True)]
        for cin, cout, stride in zip(channels[:-1], channels[1:], strides):
            layers += [nn.Conv1d(cin, cin, kernel, stride=stride, padding=pad, groups=cin, bias=False),
                       nn.BatchNorm1d(cin), nn.ReLU(inplace=True),
                       nn.Conv1d(cin, cout, 1, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*layers)
        self.pool = AttentiveStatsPool(channels[-1], attention_dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels[-1], n_classes))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``feats``: normalised ``(batch, n_features, frames)``; ``lengths``: real frames per clip."""
        h, lengths = masked_sequential(self.blocks, feats, lengths)
        return self.head(self.pool(h, lengths))

"""Padding-safe building blocks for frame models (2-D CNN, CRNN).

A batch of clips of different lengths is zero-padded to the longest one and carries
``lengths`` (real frames per clip). These blocks make padding invisible in eval mode: a clip
gives the same logits alone or padded inside a batch (``tests/models/test_models.py`` checks it).
"""

from __future__ import annotations

import torch
from torch import nn

from emovox.models.common import length_mask


def _mask_like(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(batch, 1, ..., frames)`` bool mask broadcastable to ``x`` (time is the last axis)."""
    mask = length_mask(lengths, x.shape[-1], device=x.device)
    return mask.view(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])


def pooled_lengths(lengths: torch.Tensor | None, pool: nn.Module) -> torch.Tensor | None:
    """Frames left after a ceil-mode max pool along the last axis: ``ceil(len / stride)``, exact."""
    if lengths is None:
        return None
    stride = pool.stride if isinstance(pool.stride, int) else pool.stride[-1]
    kernel = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[-1]
    if not pool.ceil_mode or kernel != stride:
        raise ValueError("padding-safe pooling needs MaxPool with ceil_mode=True and kernel == stride")
    if stride == 1:
        return lengths
    return torch.div(lengths + stride - 1, stride, rounding_mode="floor").clamp_min(1)


def conv_lengths(lengths: torch.Tensor | None, conv: nn.Module) -> torch.Tensor | None:
    """Frames left after a 'same'-padded convolution with stride ``s`` along the last axis: ``ceil(len / s)``."""
    if lengths is None:
        return None
    stride = conv.stride[-1]
    kernel, pad, dil = conv.kernel_size[-1], conv.padding[-1], conv.dilation[-1]
    if pad != dil * (kernel - 1) // 2 or kernel % 2 == 0:
        raise ValueError("padding-safe convolution needs an odd kernel with 'same' padding along time")
    if stride == 1:
        return lengths
    return torch.div(lengths + stride - 1, stride, rounding_mode="floor").clamp_min(1)


_SHAPE_KEEPING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.GELU, nn.SiLU, nn.Dropout, nn.Dropout2d, nn.Identity)


def masked_sequential(blocks: nn.Sequential, x: torch.Tensor, lengths: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run 'same' convolutions (any stride), norms, activations, dropout and ceil-mode max pools over
    ``(batch, ..., frames)`` so that frames past ``lengths`` cannot change the real frames' outputs.

    Padded frames are set to zero before every convolution (what its own zero padding sees at the
    end of the unpadded clip) and to ``-inf`` before a max pool; lengths follow exactly.
    Element-wise modules (norms, activations, dropout) run unmasked: their padded outputs are
    re-masked before the next convolution or pool. Returns the output (padded frames zeroed) and
    the new lengths.

    Without autograd (inference), only the padded frames that a clip's last real output actually
    reads are overwritten, in place, on the intermediate tensors this function made: frames further
    out cannot reach a real output (they may hold anything until the final masking). That is the
    same result for a fraction of the memory traffic of masking the whole padding at every layer.
    """
    if lengths is None:
        return blocks(x), None
    owned = False  # x is the caller's tensor until a module has produced a new one
    for m in blocks:
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            new_lengths = pooled_lengths(lengths, m)
            x = m(_fill_past(x, lengths, _reach(m, new_lengths), float("-inf"), owned))
            lengths = new_lengths
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            new_lengths = conv_lengths(lengths, m)
            x = m(_fill_past(x, lengths, _reach(m, new_lengths), 0.0, owned))
            lengths = new_lengths
        elif isinstance(m, _SHAPE_KEEPING):
            x = m(x)
        else:
            raise TypeError(f"masked_sequential cannot mask through {type(m).__name__}")
        owned = True
    return _fill_padding(x, lengths, 0.0), lengths


def _last(v) -> int:
    return v if isinstance(v, int) else v[-1]


def _reach(m: nn.Module, new_lengths: torch.Tensor) -> torch.Tensor:
    """Per clip, the end (exclusive) of the input frames that ``m``'s last real output frame reads."""
    span = _last(getattr(m, "dilation", 1)) * (_last(m.kernel_size) - 1) + 1
    return (new_lengths - 1) * _last(m.stride) - _last(m.padding) + span


def _fill_past(x: torch.Tensor, lengths: torch.Tensor, reach: torch.Tensor, value: float, owned: bool) -> torch.Tensor:
    """``x`` with its padded frames set to ``value``: all of them (out of place) when autograd or a
    tracer is watching or ``x`` is not ours to change, else only ``[length, reach)`` per clip, in place."""
    if not owned or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return _fill_padding(x, lengths, value)
    t = x.shape[-1]
    for b, (n, r) in enumerate(zip(lengths.tolist(), reach.tolist())):
        if n < t and r > n:
            x[b, ..., n : min(r, t)] = value
    return x


def _fill_padding(x: torch.Tensor, lengths: torch.Tensor, value: float) -> torch.Tensor:
    """``x`` with every frame past ``lengths`` set to ``value``, in ``x``'s memory layout (an out-of-place
    ``masked_fill`` with a broadcast mask returns contiguous NCHW, which would undo a channels-last
    model; ``torch.where`` keeps the layout, and is faster)."""
    return torch.where(_mask_like(x, lengths), x, value)


def utterance_mean_norm(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """``(batch, features, frames)`` minus each clip's mean over its own real frames, per feature
    (cepstral/spectral mean normalisation): a fixed gain or channel colouring, which shifts every
    log-mel frame of a recording alike, cancels. Padded frames come out zero."""
    if lengths is None:
        return x - x.mean(dim=-1, keepdim=True)
    mask = _mask_like(x, lengths)
    mean = x.masked_fill(~mask, 0.0).sum(dim=-1, keepdim=True) / lengths.to(x.dtype).clamp_min(1).view(-1, 1, 1)
    return (x - mean).masked_fill(~mask, 0.0)


def masked_mean_2d(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """``(batch, channels, freq, frames)`` → ``(batch, channels)``: mean over freq and real frames."""
    x = x.mean(dim=2)
    if lengths is None:
        return x.mean(dim=-1)
    mask = length_mask(lengths, x.shape[-1], device=x.device).to(x.dtype)[:, None, :]
    return (x * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling (Okabe et al., Interspeech 2018).

    ``(batch, dim, frames)`` → ``(batch, 2 * dim)``: attention-weighted mean and standard
    deviation over time; the attention is a softmax over real frames only (padding masked).
    """

    def __init__(self, dim: int, attention_dim: int = 64):
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(dim, attention_dim, 1), nn.Tanh(), nn.Conv1d(attention_dim, 1, 1))

    def forward(self, h: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.attention(h)  # (batch, 1, frames)
        if lengths is not None:
            scores = scores.masked_fill(~length_mask(lengths, h.shape[-1], device=h.device)[:, None, :],
                                        float("-inf"))
        w = torch.softmax(scores, dim=-1)
        mean = (w * h).sum(dim=-1)
        var = (w * h.square()).sum(dim=-1) - mean.square()
        return torch.cat([mean, var.clamp_min(1e-6).sqrt()], dim=-1)

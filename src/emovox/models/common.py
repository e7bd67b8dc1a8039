"""Pieces shared by model families."""

from __future__ import annotations

import torch


def length_mask(lengths: torch.Tensor | None, frames: int, *, device=None) -> torch.Tensor | None:
    """``(batch, frames)`` bool, True on real frames; None when ``lengths`` is None."""
    if lengths is None:
        return None
    idx = torch.arange(frames, device=device if device is not None else lengths.device)
    return idx[None, :] < lengths[:, None]


def scale_lengths(lengths: torch.Tensor | None, frames_in: int, frames_out: int) -> torch.Tensor | None:
    """Frames left after pooling: ceil(len * out / in), at least 1."""
    if lengths is None:
        return None
    return torch.clamp(torch.div(lengths * frames_out + frames_in - 1, frames_in, rounding_mode="floor"), min=1)


def masked_mean(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Mean over the last axis of ``(batch, channels, frames)``, ignoring frames past ``lengths``."""
    if lengths is None:
        return x.mean(dim=-1)
    mask = length_mask(lengths, x.shape[-1], device=x.device).to(x.dtype)[:, None, :]
    return (x * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)


def zero_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Zero the frames of ``(batch, channels, frames)`` past ``lengths`` (no-op when None)."""
    if lengths is None:
        return x
    return x * length_mask(lengths, x.shape[-1], device=x.device).to(x.dtype)[:, None, :]

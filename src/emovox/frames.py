"""Frames of features, batched and trace-safe: how many frames a clip gives, which are all-zero audio, compacting them out, cropping/padding to a fixed length, and :func:`featurize` (waveforms → features with the zero-frame skip)."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emovox.features import FeatureConfig, build_frontend


def pad_to_one_frame(x: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """``(..., samples)`` zero-padded at the end to at least one frame (``cfg.samples_for(1)``), so a
    clip shorter than one analysis frame still gives one frame instead of failing."""
    short = cfg.samples_for(1) - x.shape[-1]
    return F.pad(x, (0, short)) if short > 0 else x


def nonzero_frame_mask(x: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """``(batch, frames)`` bool: True where the frame's window samples are not all exactly zero.

    Frames are the analysis windows of ``cfg`` (same framing as the features), computed as one
    batched max-pool over ``|x|``: no Python loop, and trace-safe, so the exported graphs
    (:mod:`emovox.export.graphs`) run this same function with a dynamic length.
    """
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if cfg.center:
        x = F.pad(x, (cfg.n_fft // 2, cfg.n_fft // 2))
    wl, left = cfg.window_length, cfg.window_offset
    right = cfg.frame_span - wl - left
    if not torch.jit.is_tracing() and x.shape[-1] < cfg.frame_span:  # not one whole frame
        return torch.zeros(x.shape[0], 0, dtype=torch.bool, device=x.device)
    x = x[:, left:] if right == 0 else x[:, left:-right]
    peak = F.max_pool1d(x.abs().unsqueeze(1), kernel_size=wl, stride=cfg.hop_length).squeeze(1)
    return peak > 0


def featurize(x: torch.Tensor | np.ndarray, cfg: FeatureConfig, frontend: nn.Module | None = None
              ) -> list[torch.Tensor]:
    """Features for a batch of equal-length waveforms, as a list of ``(n_features, frames)``.

    Applies ``skip_zero_frames`` (which makes lengths differ) but not ``num_frames``.
    """
    x = pad_to_one_frame(torch.as_tensor(x, dtype=torch.float32), cfg)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    frontend = frontend or build_frontend(cfg)
    with torch.no_grad():
        feats = frontend(x)
    if cfg.kind == "mfcc" and cfg.skip_zero_frames:
        feats, counts = compact_frames(feats, nonzero_frame_mask(x, cfg))
        return [f[:, :n] for f, n in zip(feats, counts.tolist())]
    return list(feats)


@functools.lru_cache(maxsize=32)
def _silence_column(cfg: FeatureConfig) -> torch.Tensor:
    fe = build_frontend(replace(cfg, top_db=None))
    with torch.no_grad():
        col = fe(torch.zeros(1, cfg.samples_for(1)))[0, :, 0].clone()
    return col


def silence_features(cfg: FeatureConfig) -> torch.Tensor:
    """The feature vector ``(n_features,)`` of digital silence: the value used for padding."""
    return _silence_column(cfg)


def _tracing() -> bool:
    """Whether a graph is being captured (``torch.jit.trace``, the TorchScript-based ONNX exporter,
    coremltools' trace): shapes are then symbolic, so no Python branch may depend on them."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def frame_counts(num_samples: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """:meth:`FeatureConfig.num_frames_for` for a tensor of sample counts (each clip of a zero-padded batch)."""
    n = torch.as_tensor(num_samples)
    if cfg.center:
        return 1 + torch.div(n, cfg.hop_length, rounding_mode="floor")
    whole = 1 + torch.div((n - cfg.frame_span).clamp_min(0), cfg.hop_length, rounding_mode="floor")
    return torch.where(n < cfg.frame_span, torch.zeros_like(whole), whole)


def compact_frames(feats: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each item's kept frames to the front, in order; return them and their count (≥ 1).

    ``feats``: ``(batch, n_features, frames)``; ``keep``: ``(batch, frames)`` bool (the streaming MFCC-LSTM's
    non-zero frames, :func:`nonzero_frame_mask`). An item with no kept frame keeps its first frame.
    Frames past an item's count are zero. The one implementation of zero-frame compaction: a stable
    sort by a computed key and a gather, no Python loop, so the exported graphs run it with any
    length and batch; eagerly the result is cut to the longest item's count (as ``pad_sequence``).
    """
    t = feats.shape[-1]
    pos = torch.arange(t, device=feats.device).unsqueeze(0)
    key = torch.where(keep, pos, pos + t)  # unique keys: kept frames first, each group in order
    order = torch.argsort(key, dim=-1)
    counts = keep.to(torch.int64).sum(dim=-1)
    counts = torch.maximum(counts, torch.ones_like(counts))
    out = torch.gather(feats, 2, order.unsqueeze(1).expand_as(feats))
    out = torch.where((pos < counts.unsqueeze(1)).unsqueeze(1), out, torch.zeros_like(out))
    if not _tracing():
        out = out[..., : int(counts.max())]
    return out, counts


def fix_frames(feats: torch.Tensor, num_frames: int, *, offset: int | None = None,
               cfg: FeatureConfig | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Crop or pad ``(..., n_features, frames)`` to ``num_frames``: the one crop/pad of the pipeline.

    Crops at ``offset`` (default: centred, at ``(t - n) // 2``); pads with the features of silence
    (``cfg`` given) or zeros, ``offset`` frames on the left (default: ``(n - t) // 2``) and the rest
    on the right. ``lengths`` (``(batch,)``, with ``feats`` ``(batch, n_features, frames)``): each
    item's real frames in a padded batch, which are what is cropped or padded.

    Batched and trace-safe: computed as a gather with computed indices (index arithmetic in float,
    exact below 2**24 frames, which Core ML's converter needs), so data batches, the pipeline and
    the exported graphs (any length, any batch) all run this function.
    """
    tracing = _tracing()
    if not tracing and lengths is None and feats.shape[-1] == num_frames:
        return feats
    # n_features as a Python int while tracing: a traced shape here does not convert to Core ML
    n_features = cfg.n_features if tracing and cfg is not None else feats.shape[-2]
    flat = feats if feats.dim() == 3 else feats.reshape(-1, n_features, feats.shape[-1])
    ones = torch.ones_like(flat[:, 0, 0])
    n = ones * flat.shape[-1] if lengths is None else lengths.to(flat.dtype)
    half = (n - num_frames) / 2.0
    shift = torch.sign(half) * torch.floor(torch.abs(half))  # trunc: crop start, or minus the left pad
    if offset is not None:
        given = torch.where(n > num_frames, torch.clamp(torch.minimum(ones * offset, n - num_frames), min=0),
                            -torch.clamp(torch.minimum(ones * offset, num_frames - n), min=0))
        shift = given
    src = torch.arange(num_frames, device=flat.device).to(flat.dtype).unsqueeze(0) + shift.unsqueeze(1)
    valid = torch.logical_and(src >= 0, src < n.unsqueeze(1))
    src = torch.minimum(torch.maximum(src, torch.zeros_like(src)), (n - 1).unsqueeze(1)).to(torch.int64)
    gathered = torch.gather(flat, 2, src.unsqueeze(1).expand(-1, n_features, -1))
    fill = silence_features(cfg) if cfg is not None else torch.zeros(n_features)
    out = torch.where(valid.unsqueeze(1), gathered, fill.to(device=flat.device, dtype=flat.dtype).view(1, -1, 1))
    return out if feats.dim() == 3 else out.reshape(*feats.shape[:-1], num_frames)

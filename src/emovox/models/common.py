"""Pieces shared by model families."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class StreamingModel(Protocol):
    """A network that runs frame by frame (``streaming = True``; the streaming MFCC-LSTM's LSTM): what streaming,
    the per-frame training objective and the streaming exports rely on, declared in one place.

    Input is ``(batch, frames, n_features)`` (time before features, unlike frame models'
    ``(batch, n_features, frames)``); ``hidden`` is the state carried between calls (None: start)."""

    streaming: bool

    def forward(self, x: torch.Tensor, hidden: Any = None, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, Any]:
        """Logits after each clip's last real frame, and the state after it."""

    def steps(self, x: torch.Tensor, hidden: Any = None) -> tuple[torch.Tensor, Any]:
        """Logits after every frame ``(batch, frames, n_classes)``, and the state after the last."""

    def frame_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``steps(x)[0]`` from no state (the per-frame training objective)."""

    def padded_logits(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(x, None, lengths)[0]`` in one unpacked pass (a zero-padded batch, causal model)."""


def is_streaming(model: Any) -> bool:
    """Whether ``model`` (a network, or its class) runs frame by frame: see :class:`StreamingModel`."""
    return bool(getattr(model, "streaming", False))


def head_logits(model: torch.nn.Module, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The pipeline's head stage: normalised features ``(batch, n_features, frames)`` (+ frames per
    clip) → logits, for frame models and streaming ones (run from no state) alike. Trace-safe."""
    if is_streaming(model):  # one causal pass read at each clip's last real frame: forward(x, None, lengths)'s
        return model.padded_logits(feats.transpose(1, 2), lengths)  # logits, without packed sequences
    return model(feats, lengths)


def stream_step(model: torch.nn.Module, feats: torch.Tensor, hidden: Any = None, *, every_frame: bool = False
                ) -> tuple[torch.Tensor, Any]:
    """The pipeline's streaming step on a :class:`StreamingModel`: normalised features ``(batch,
    n_features, frames)`` continue the sequence from ``hidden`` (None: start) → logits after the
    last frame ``(batch, n_classes)``, or after every frame ``(batch, frames, n_classes)`` with
    ``every_frame``, and the state after the last frame. Trace-safe. Streaming sessions, the
    exported step graphs (through :func:`emovox.modelio.streaming_step`) and the per-frame training
    loss all step the model here."""
    x = feats.transpose(1, 2)  # StreamingModel input: (batch, frames, n_features)
    return model.steps(x, hidden) if every_frame else model(x, hidden)


def length_mask(lengths: torch.Tensor | None, frames: int, *, device=None) -> torch.Tensor | None:
    """``(batch, frames)`` bool, True on real frames; None when ``lengths`` is None."""
    if lengths is None:
        return None
    idx = torch.arange(frames, device=device if device is not None else lengths.device)
    return idx[None, :] < lengths[:, None]


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


def fuse_conv_bn(module: torch.nn.Module) -> int:
    """Fold every eval-mode batch norm that directly follows a convolution inside an ``nn.Sequential``
    into that convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and put an ``Identity`` in
    its place, in place. The function computed is unchanged (batch norm in eval mode is a fixed
    per-channel affine map); inference does one pass less over every activation. For inference
    only: the fused module's ``state_dict`` no longer matches the saved one. Returns the number
    of pairs fused.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if module.training:
        raise ValueError("fuse_conv_bn needs a model in eval mode")
    pairs = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d))
    fused = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if any(isinstance(conv, c) and type(bn) is b for c, b in pairs) and bn.track_running_stats:
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
                fused += 1
    return fused

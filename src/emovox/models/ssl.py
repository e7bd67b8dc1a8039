"""The FastAPI wav2vec2 hybrid's hybrid: a pretrained speech backbone (wav2vec2, HuBERT, WavLM) + a small trained head.

``(batch, 1, samples)`` 16 kHz waveform (features kind ``"waveform"``) → backbone (frozen by
default; :mod:`emovox.pretrained.backbones`) → hidden states of the selected layers ``(batch, n_layers,
hidden, frames)`` → each layer normalised over ``hidden`` (no affine) and summed with learned
softmax weights → head → logits. Heads:

- ``"cnn"`` (default): Conv1d 5 → ReLU → dropout → Conv1d 3 → ReLU, masked mean and standard
  deviation over time;
- ``"attention"``: 1×1 projection → ReLU → attentive statistics pooling;

then dropout → dense → ReLU → dropout → dense. No batch norm (a DDP run then equals a
single-process run; see :mod:`emovox.training.distributed`). Padding-safe: convolutions and pooling are
masked, and the backbone runs each clip of a padded batch at its own length.

``forward(x, lengths=None)`` accepts the waveform ``(batch, 1, samples)`` or ``(batch, samples)``
(``lengths`` in samples), or cached hidden states ``(batch, n_layers, hidden, frames)``
(``lengths`` in frames), which is how the head trains on the disk cache without running the
backbone.

Saving: ``state_dict()`` holds the head and the fine-tuned top backbone layers only; the frozen
backbone is referenced (``kwargs["backbone"]``, a :class:`~emovox.pretrained.backbone_ref.BackboneRef`) and
reloaded from its source, or from ``backbone/`` inside the model folder when bundled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emovox.models import register
from emovox.models.blocks import AttentiveStatsPool, masked_sequential
from emovox.models.common import length_mask

log = logging.getLogger(__name__)

HEADS = ("cnn", "attention", "mean", "stats")
#: Heads that are linear probes on pooled states (fit in closed form, not by epochs)
PROBE_HEADS = ("mean", "stats")
#: Inverse L2 strengths tried when the ``mean`` head is fit as a linear probe; validation UAR picks one.
PROBE_C = (0.001, 0.003, 0.01, 0.03, 0.1)


def _stats_pool(h: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Masked mean and standard deviation over time: ``(batch, C, T)`` → ``(batch, 2C)``."""
    if lengths is None:
        mean = h.mean(dim=-1)
        var = h.var(dim=-1, unbiased=False)
    else:
        m = length_mask(lengths, h.shape[-1], device=h.device).to(h.dtype)[:, None, :]
        n = m.sum(dim=-1).clamp_min(1.0)
        mean = (h * m).sum(dim=-1) / n
        var = ((h - mean[..., None]).square() * m).sum(dim=-1) / n
    return torch.cat([mean, var.clamp_min(1e-6).sqrt()], dim=-1)


def parse_layers(spec: str | Sequence[int] | None, num_layers: int) -> list[int]:
    """``None``/``"all"`` → 0..num_layers; ``"6-12"``, ``"0,4,8"`` or a list → those layers (validated)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return list(range(num_layers + 1))
    out: list[int] = []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    for part in parts:
        if isinstance(part, str) and "-" in part.strip()[1:]:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    bad = [i for i in out if not 0 <= i <= num_layers]
    if bad or not out or len(set(out)) != len(out):
        raise ValueError(f"backbone layers must be distinct indices in 0..{num_layers} (0: the transformer's input, "
                         f"{num_layers}: the last layer's output), got {spec!r}")
    return out


@register("ssl")
class SSLHybrid(nn.Module):
    streaming = False
    #: modelio passes the model folder, where a bundled backbone lives
    needs_model_dir = True

    def __init__(self, n_features: int = 1, n_classes: int = 4, *, backbone: str | dict[str, Any],
                 revision: str | None = None, layers: str | Sequence[int] | None = None, finetune_layers: int = 0,
                 head: str = "cnn", channels: int = 128, hidden: int = 128, dropout: float = 0.2,
                 layer_norm: bool = True, chunk_s: float | None = None, overlap_s: float = 2.0,
                 model_dir: str | os.PathLike | None = None):
        super().__init__()
        from emovox.errors import BackboneError
        from emovox.pretrained.backbone_loading import load_backbone
        from emovox.pretrained.backbone_ref import BackboneRef

        if n_features != 1:
            raise ValueError(f"the ssl model takes raw samples (features kind 'waveform', one feature), "
                             f"got {n_features} features")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        try:
            self.backbone = load_backbone(backbone, revision=revision, model_dir=model_dir, chunk_s=chunk_s,
                                          overlap_s=overlap_s)
        except BackboneError as e:
            if not isinstance(backbone, dict):
                raise
            raise BackboneError(f"this model needs the backbone it was trained with, "
                                f"{BackboneRef.from_dict(backbone).describe()}: {e}") from e
        n_layers = self.backbone.num_layers
        if not 0 <= int(finetune_layers) <= n_layers:
            raise ValueError(f"finetune_layers must be in 0..{n_layers} (the backbone's transformer layers), "
                             f"got {finetune_layers}")
        self.layers = parse_layers(layers, n_layers)
        self.finetune_layers = int(finetune_layers)
        self.layer_norm = bool(layer_norm)
        dim = self.hidden_dim = self.backbone.hidden_size
        self.layer_weights = nn.Parameter(torch.zeros(len(self.layers)))
        self.head_kind = head
        if head in PROBE_HEADS:  # a linear probe: standardised per-layer time statistics → one linear layer
            self.layer_weights.requires_grad_(False)  # the linear layer weighs the layers itself
            self.convs = self.pool = None
            n_pooled = len(self.layers) * dim * (2 if head == "stats" else 1)
            self.register_buffer("pooled_mean", torch.zeros(n_pooled))
            self.register_buffer("pooled_std", torch.ones(n_pooled))
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_pooled, n_classes))
        else:
            if head == "cnn":
                self.convs = nn.Sequential(nn.Conv1d(dim, channels, 5, padding=2), nn.ReLU(),
                                           nn.Dropout(dropout * 0.5), nn.Conv1d(channels, channels, 3, padding=1),
                                           nn.ReLU())
                self.pool = None
            else:
                self.convs = nn.Sequential(nn.Conv1d(dim, channels, 1), nn.ReLU())
                self.pool = AttentiveStatsPool(channels, max(16, channels // 2))
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels, hidden), nn.ReLU(),
                                            nn.Dropout(dropout), nn.Linear(hidden, n_classes))
        self._freeze()
        self.kwargs = {"backbone": self.backbone.ref.to_dict(), "layers": list(self.layers),
                       "finetune_layers": self.finetune_layers, "head": head, "channels": channels, "hidden": hidden,
                       "dropout": dropout, "layer_norm": self.layer_norm, "chunk_s": self.backbone.chunk_s,
                       "overlap_s": overlap_s}
        self.register_load_state_dict_pre_hook(_fill_frozen_backbone)

    # -- freezing and saving
    def _freeze(self) -> None:
        model = self.backbone.model
        model.requires_grad_(False)
        self._saved_prefixes: list[str] = []
        n = self.finetune_layers
        if n:
            total = len(model.encoder.layers)
            for i in range(total - n, total):
                model.encoder.layers[i].requires_grad_(True)
                self._saved_prefixes.append(f"backbone.model.encoder.layers.{i}.")
            final_norm_last = getattr(getattr(model, "config", None), "do_stable_layer_norm", False) or \
                self.backbone.ref.model_type == "whisper"
            if final_norm_last:  # its final norm follows the last layer
                model.encoder.layer_norm.requires_grad_(True)
                self._saved_prefixes.append("backbone.model.encoder.layer_norm.")

    def _is_saved(self, key: str) -> bool:
        return not key.startswith("backbone.") or any(key.startswith(p) for p in self._saved_prefixes)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The head and the fine-tuned backbone layers; the frozen backbone is referenced, not saved."""
        sd = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in sd if k.startswith(prefix) and not self._is_saved(k[len(prefix):])]:
            del sd[key]
        return sd

    def train(self, mode: bool = True):
        """The backbone always runs in eval mode: no dropout, LayerDrop or SpecAugment masking inside it,
        so fine-tuning is deterministic and the cached states are what training sees."""
        super().train(mode)
        self.backbone.eval()
        return self

    def bundle_backbone(self, out_dir: str | os.PathLike, *, write: bool = True) -> Path:
        """Copy the backbone into ``out_dir/backbone`` (when ``write``) and reference it from there."""
        from emovox.pretrained.backbone_ref import BUNDLE_DIR

        dest = Path(out_dir) / BUNDLE_DIR
        if write:
            self.backbone.save_to(dest)
        self.backbone.ref.kind, self.backbone.ref.source, self.backbone.ref.revision = "bundled", BUNDLE_DIR, None
        self.kwargs["backbone"] = self.backbone.ref.to_dict()
        return dest

    # -- computing
    def head(self, states: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``(batch, n_layers, hidden, frames)`` (+ frames per clip) → logits."""
        if self.head_kind in PROBE_HEADS:
            return self.classifier((self.pool_states(states.float(), lengths) - self.pooled_mean) / self.pooled_std)
        h = self.mix_layers(states.float())
        h, lengths = masked_sequential(self.convs, h, lengths)
        pooled = _stats_pool(h, lengths) if self.pool is None else self.pool(h, lengths)
        return self.classifier(pooled)

    def pool_states(self, states: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, n_layers, hidden, frames)`` → each layer's mean over the real frames, ``(batch, n_layers *
        hidden)``; the ``stats`` head adds each layer's log standard deviation, ``log(std + 1e-3)``, after them."""
        if lengths is None:  # .mean, not a sum over a frame count: trace-safe with a dynamic time axis
            mean = states.mean(dim=-1)
            if self.head_kind != "stats":
                return mean.flatten(1)
            var = ((states - mean[..., None]) ** 2).mean(dim=-1)
        else:
            m = length_mask(lengths, states.shape[-1], device=states.device).to(states.dtype)[:, None, None, :]
            n = m.sum(dim=-1).clamp_min(1.0)
            mean = (states * m).sum(dim=-1) / n
            if self.head_kind != "stats":
                return mean.flatten(1)
            var = (((states - mean[..., None]) * m) ** 2).sum(dim=-1) / n
        return torch.cat([mean.flatten(1), torch.log(var.sqrt() + 1e-3).flatten(1)], dim=1)

    def pooled_rows(self, features) -> np.ndarray:
        """Cached ``(n_layers, hidden, frames)`` arrays → each clip's pooled row, float32 (:meth:`pool_states`,
        computed in NumPy): what a probe head reads, before its standardisation."""
        def row(f):
            x = np.asarray(f, dtype=np.float32)
            parts = [x.mean(axis=-1).reshape(-1)]
            if self.head_kind == "stats":
                parts.append(np.log(x.std(axis=-1) + 1e-3).reshape(-1))
            return np.concatenate(parts)

        return np.stack([row(f) for f in features])

    def fit_pooled_stats(self, rows: np.ndarray) -> None:
        """The ``mean`` head's standardisation: mean and standard deviation of the training clips' pooled
        rows (:meth:`pooled_rows`), like a probe's StandardScaler."""
        self.pooled_mean.copy_(torch.from_numpy(rows.mean(axis=0)))
        self.pooled_std.copy_(torch.from_numpy(rows.std(axis=0)).clamp_min(1e-3))

    def standardise(self, rows: np.ndarray) -> np.ndarray:
        return (rows - self.pooled_mean.numpy()) / self.pooled_std.numpy()

    def set_linear(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Load the ``mean`` head's linear layer, ``weight`` ``(n_classes, n_layers * hidden)``."""
        linear = self.classifier[-1]
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
            linear.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))

    def mix_layers(self, states: torch.Tensor) -> torch.Tensor:
        """``(batch, n_layers, hidden, frames)`` → each layer normalised over ``hidden`` (LayerNorm without
        affine, eps 1e-5), summed with the softmax layer weights → ``(batch, hidden, frames)``.

        Written as per-frame scales instead of ``F.layer_norm`` on a transposed copy: the same numbers
        without materialising the normalised states (half the time on CPU, where this dominates training).
        """
        w = torch.softmax(self.layer_weights, dim=0).view(1, -1, 1)
        if not self.layer_norm:
            return (states * w[..., None]).sum(dim=1)
        var, mean = torch.var_mean(states, dim=2, unbiased=False)  # (batch, layers, frames)
        scale = w * torch.rsqrt(var + 1e-5)
        h = states[:, 0] * scale[:, 0, None]
        for i in range(1, states.shape[1]):
            h = h + states[:, i] * scale[:, i, None]
        return h - (scale * mean).sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 4:
            return self.head(x, lengths)
        if x.dim() == 3:
            if x.shape[1] != 1:
                raise ValueError(f"expected a waveform (batch, 1, samples) or hidden states (batch, layers, hidden, "
                                 f"frames), got {tuple(x.shape)}")
            x = x[:, 0]
        states, frames = self.backbone.hidden_states(x, self.layers, lengths)
        return self.head(states, frames)

    def layer_weight_table(self) -> dict[int, float]:
        """The learned softmax weight of each backbone layer (what the head listens to)."""
        w = torch.softmax(self.layer_weights.detach().float().cpu(), dim=0)
        return {int(i): round(float(v), 4) for i, v in zip(self.layers, w)}


def _fill_frozen_backbone(module: SSLHybrid, state_dict, prefix, local_metadata, strict, missing, unexpected,
                          errors) -> None:
    """Load pre-hook: a saved state holds no frozen backbone tensors; keep the loaded backbone's."""
    for key, t in module.backbone.state_dict(prefix=prefix + "backbone.", keep_vars=True).items():
        if key not in state_dict and not module._is_saved(key[len(prefix):]):
            state_dict[key] = t.detach()

"""Whisper encoders: packaged CTranslate2 checkpoints, their reader, and the encoder as a torch module.

Where the weights come from
    ``whisper-base`` and ``whisper-tiny.en`` name OpenAI Whisper checkpoints (MIT licence) that
    pip packages carry in CTranslate2 (faster-whisper) format, so they install offline from the
    package registry (:data:`PACKAGED`). A local CTranslate2 folder (``model.bin`` beside its
    ``config.json``) works the same way. Hugging Face Whisper folders and hub ids are loaded by
    :func:`emovox.pretrained.backbone_loading.load_backbone` through transformers and end up in the same encoder.

The CTranslate2 ``model.bin`` (format version 6), read by :func:`read_ct2_variables`
    little-endian: ``u32`` version, string spec name (``WhisperSpec``), ``u32`` revision, ``u32``
    variable count, then per variable: string name, ``u8`` rank, ``u32`` dims, ``u8`` dtype code,
    ``u32`` byte count, raw data; then the aliases. A string is ``u16`` length (including a final
    NUL) and the bytes. Only the ``encoder/`` variables are kept; the decoder is skipped without
    being read. Every read is bounded by the bytes the header announces, so a truncated or corrupt
    file fails at once with a message naming the file and the variable, never a hang.

The encoder
    :class:`WhisperEncoder` has transformers' modules and parameter names (two convolutions,
    positions, pre-norm transformer layers, a final LayerNorm) and runs them on the clip's own
    length, returning every hidden state; its docstring says why it is not transformers' own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emovox.errors import WhisperWeightsError

# the NumPy half (reader, packaged checkpoints, sizes) lives in whisper_weights
from emovox.pretrained.whisper_weights import (
    CONV_STRIDE,
    HOP_LENGTH,
    EncoderDims,
    ct2_encoder_arrays,
    encoder_arrays,
)

# ---------------------------------------------------------------------------------------------
# The encoder


class _SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, device=None):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(d, d, device=device), nn.Linear(d, d, bias=False, device=device)
        self.v_proj, self.out_proj = nn.Linear(d, d, device=device), nn.Linear(d, d, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v, as Whisper
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class _EncoderLayer(nn.Module):
    """Pre-norm transformer layer; parameter names as transformers' ``WhisperEncoderLayer``."""

    def __init__(self, d: int, heads: int, ffn: int, device=None):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(d, device=device)
        self.self_attn = _SelfAttention(d, heads, device)
        self.final_layer_norm = nn.LayerNorm(d, device=device)
        self.fc1, self.fc2 = nn.Linear(d, ffn, device=device), nn.Linear(ffn, d, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder, run at the clip's own length.

    Written here rather than taken from transformers (whose ``WhisperEncoder`` has the same modules and
    parameter names, so its state dicts load unchanged) for two reasons: its ``forward`` refuses any input
    that is not exactly 3000 mel frames (30 s; padding a 3-s clip to 30 s costs ~10x the time), and
    importing its modeling code takes ~6 s here, which a one-clip ``emovox classify`` would pay on every
    call. ``tests/pretrained/test_whisper.py`` checks it against transformers' encoder on the same weights.
    """

    def __init__(self, dims: EncoderDims, device=None):
        super().__init__()
        d = dims.d_model
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, d, 3, padding=1, device=device)
        self.conv2 = nn.Conv1d(d, d, 3, stride=CONV_STRIDE, padding=1, device=device)
        self.embed_positions = nn.Embedding(dims.max_positions, d, device=device)
        self.layers = nn.ModuleList(_EncoderLayer(d, dims.n_heads, dims.ffn_dim, device)
                                    for _ in range(dims.n_layers))
        self.layer_norm = nn.LayerNorm(d, device=device)

    def forward(self, mel: torch.Tensor) -> list[torch.Tensor]:
        """Log-mel ``(batch, n_mels, frames)`` → every hidden state ``(batch, ceil(frames/2), d_model)``: the
        input to the first layer, then each layer's output, the last one after the final LayerNorm (as
        transformers' ``hidden_states`` and CTranslate2's ``encode``). At most 3000 mel frames (30 s)."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        n = x.shape[1]
        if n > self.dims.max_positions:
            raise ValueError(f"a Whisper encoder takes at most {self.dims.max_positions} frames "
                             f"({self.dims.max_positions * CONV_STRIDE * HOP_LENGTH / 16000:g} s), got {n}")
        x = x + self.embed_positions.weight[:n]
        states = [x]
        for layer in self.layers:
            x = layer(x)
            states.append(x)
        states[-1] = self.layer_norm(x)
        return states


def _hf_state_dict(variables: dict[str, np.ndarray], n_layers: int) -> dict[str, torch.Tensor]:
    """CTranslate2 encoder variables → encoder state-dict tensors (float32; q, k, v unfused)."""
    return {k: torch.from_numpy(v) for k, v in encoder_arrays(variables, n_layers).items()}


def load_encoder(dims: EncoderDims, state_dict: dict[str, torch.Tensor], where: str) -> WhisperEncoder:
    """An eval-mode :class:`WhisperEncoder` holding ``state_dict`` (transformers' parameter names)."""
    # built on the CPU and overwritten (torch's first use of the "meta" device, which would skip the random
    # initialisation, costs ~3 s here: more than the initialisation itself)
    encoder = WhisperEncoder(dims)
    try:
        encoder.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
    except RuntimeError as e:
        raise WhisperWeightsError(f"{where}: the weights do not fit a Whisper encoder of {dims}: "
                                  f"{str(e).splitlines()[0][:300]}") from None
    return encoder.eval()


def encoder_from_ct2(paths: list[Path]) -> WhisperEncoder:
    """A float32 :class:`WhisperEncoder` (eval mode) with the weights of a CTranslate2 ``model.bin``."""
    dims, arrays = ct2_encoder_arrays(paths)
    return load_encoder(dims, {k: torch.from_numpy(v) for k, v in arrays.items()}, str(paths[0]))

"""Pretrained speech backbones (wav2vec2, HuBERT, WavLM) as torch modules: windowed runs over long clips, saving, Whisper's encoder as a backbone.

Loading is in :mod:`emovox.pretrained.backbone_loading`, identity in :mod:`emovox.pretrained.backbone_ref`.

Loading
    :func:`load_backbone` takes a Hugging Face model id (``facebook/wav2vec2-base``, downloaded by
    transformers when a network is available) or a local checkpoint folder (what
    ``save_pretrained`` writes: ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
    and optionally ``preprocessor_config.json``), through transformers' Auto classes
    (``AutoConfig``, ``AutoModel``, ``AutoFeatureExtractor``), so the same code serves every
    family whose base model returns ``hidden_states``: ``wav2vec2``, ``hubert`` and ``wavlm``.
    A hub id is looked up in the local Hugging Face cache first (no network at all); only when it
    is not there, and neither ``HF_HUB_OFFLINE`` nor ``TRANSFORMERS_OFFLINE`` is set, is the hub
    contacted, after a 3 s TCP probe of the endpoint so that a machine without network fails at
    once instead of waiting on retries. Every failure is a :class:`BackboneError` naming the id or
    folder tried and how to provide a local copy.

Input normalisation
    The feature extractor's ``do_normalize`` decides whether each clip is scaled to zero mean and
    unit variance before the backbone (``Wav2Vec2FeatureExtractor``'s formula, ``(x - mean) /
    sqrt(var + 1e-7)`` over the whole clip); it runs inside :class:`Backbone`, so training,
    inference and the exported graph do the same. A folder without ``preprocessor_config.json``
    gets ``do_normalize=True`` (the ``Wav2Vec2FeatureExtractor`` default), and the log and the
    model config say so (``normalize_from``).

Identity
    A backbone is recorded (:class:`BackboneRef`, saved in the model config) by where it came
    from (hub id and revision, absolute folder, or ``backbone/`` bundled inside the model folder)
    plus two hashes: ``config_hash`` over the architecture fields of its config (type, sizes,
    convolution layout, norms; stable across transformers versions) and ``weights_hash`` over the
    bytes of every parameter and buffer (independent of file format, file names and parameter
    names). Loading a model whose backbone has another architecture fails; other weights with the
    same architecture give a warning.

Long clips
    Clips longer than ``chunk_s`` (20 s) run through the backbone in windows of ``chunk_s`` with
    ``overlap_s`` (2 s) of overlap, starting on multiples of the convolution stride so every
    window's frames sit on the whole clip's frame grid; each output frame is taken from the window
    where it lies furthest from an edge (the seam is the middle of the overlap). Memory for the
    backbone is that of one window; the output is ``n_layers x hidden x frames``. Up to
    ``chunk_s`` the result is exactly one pass over the clip; beyond it, frames near a seam see at
    least ``overlap_s / 2`` of context on each side instead of the whole clip.

Hidden-state cache
    :class:`HiddenStateCache` stores each clip's selected hidden states as one float16 ``.npy``
    of shape ``(n_layers, hidden, frames)`` under ``ROOT/ssl-<key>/<k[:2]>/<k>.npy``; ``<key>``
    hashes the backbone identity (config and weights hashes), the layer set, the input
    normalisation, the precision and the chunking; ``<k>`` hashes the clip's absolute path, size
    and modification time. Files are opened memory-mapped, so training reads them from the page
    cache instead of holding them all in memory. Size: ``n_layers x hidden x 2`` bytes per frame,
    at 50 frames/s for the standard 320-sample stride: 13 x 768 x 2 x 50 = 1.0 MB per second of
    audio for a base model with every layer (24 kB/s for the tiny test models); choose fewer
    layers to shrink it. float16 keeps ~3 significant digits (relative rounding ≤ 2^-11 = 0.05 %),
    far below what changes a classifier head's decision.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emovox.atomic import write_folder
from emovox.features import WhisperLogMel
from emovox.pretrained import whisper, whisper_weights
from emovox.pretrained.backbone_ref import WEIGHT_FILES, BackboneRef

SAMPLE_RATE_HZ = 16000
CACHE_VERSION = 1
DEFAULT_CHUNK_S = 20.0
DEFAULT_OVERLAP_S = 2.0
#: Whisper's context (30 s): its encoders take windows up to this long.
WHISPER_CHUNK_S = 30.0
#: What marks a folder written by :meth:`WhisperBackbone.save_to`.
WHISPER_ENCODER_JSON = "whisper_encoder.json"



def stitch_windows(run, x: torch.Tensor, *, stride: int, chunk: int, overlap: int, n_out: int) -> torch.Tensor:
    """Run ``run`` on windows of ``chunk`` input steps of ``x`` (last axis) overlapping by ``overlap``, starting
    on multiples of ``stride`` (input steps per output frame), and stitch the ``(..., frames)`` outputs:
    each output frame comes from the window where it lies furthest from an edge (seams mid-overlap)."""
    n, hop = x.shape[-1], chunk - overlap
    starts = [0]
    while starts[-1] + chunk < n:
        starts.append(starts[-1] + hop)
    half = (overlap // stride) // 2
    out: torch.Tensor | None = None
    for i, start in enumerate(starts):
        st = run(x[..., start : start + chunk])
        if out is None:
            out = st.new_zeros(*st.shape[:-1], n_out)
        g0 = start // stride
        lo = 0 if i == 0 else half
        hi = st.shape[-1] if i == len(starts) - 1 else hop // stride + half
        out[..., g0 + lo : g0 + hi] = st[..., lo:hi]
    return out


def _conv_geometry(config) -> tuple[list[int], list[int]]:
    return [int(k) for k in config.conv_kernel], [int(s) for s in config.conv_stride]


class Backbone(nn.Module):
    """A loaded backbone: waveforms ``(batch, samples)`` at 16 kHz → selected hidden states.

    :meth:`hidden_states` returns ``(batch, n_layers, hidden, frames)`` in float32 (layer 0 is
    the transformer's input, layer ``i`` the output of transformer layer ``i``). Clips of a
    zero-padded batch with ``lengths`` run one by one at their own length (some backbones
    normalise over time in their first convolution, so padding would change a clip's states).
    ``precision``: ``"auto"`` (bfloat16 autocast on CUDA, float32 elsewhere), ``"bf16"`` or ``"fp32"``.
    ``forward_calls`` counts backbone passes (windows), for tests and benchmarks.
    """

    def __init__(self, model: nn.Module, ref: BackboneRef, *, location: str = "", feature_extractor=None,
                 chunk_s: float = DEFAULT_CHUNK_S, overlap_s: float = DEFAULT_OVERLAP_S, precision: str = "auto"):
        super().__init__()
        self.kernels, self.strides = _conv_geometry(model.config)
        rf, jump = 1, 1
        for k, s in zip(self.kernels, self.strides):
            rf += (k - 1) * jump
            jump *= s
        self._setup(model, ref, location, feature_extractor, stride=math.prod(self.strides), receptive_field=rf,
                    num_layers=int(model.config.num_hidden_layers), hidden_size=int(model.config.hidden_size),
                    chunk_s=chunk_s, overlap_s=overlap_s, precision=precision)

    def _setup(self, model: nn.Module, ref: BackboneRef, location: str, feature_extractor, *, stride: int,
               receptive_field: int, num_layers: int, hidden_size: int, chunk_s: float, overlap_s: float,
               precision: str) -> None:
        self.model, self.ref, self.location, self.feature_extractor = model, ref, location, feature_extractor
        self.stride, self.receptive_field = stride, receptive_field
        self.num_layers, self.hidden_size = num_layers, hidden_size
        self.precision = precision
        self.set_chunking(chunk_s, overlap_s)
        self.forward_calls = 0

    def set_chunking(self, chunk_s: float, overlap_s: float) -> None:
        """Windows for long clips, in samples snapped to the frame stride (checked by :meth:`_check_chunking`)."""
        s = self.stride
        chunk, overlap = (int(round(v * SAMPLE_RATE_HZ / s)) * s for v in (chunk_s, overlap_s))
        self._check_chunking(chunk, overlap, chunk_s, overlap_s)
        self.chunk_s, self.overlap_s = chunk_s, overlap_s
        self.chunk_samples, self.overlap_samples = chunk, overlap

    def _check_chunking(self, chunk: int, overlap: int, chunk_s: float, overlap_s: float) -> None:
        s = self.stride
        need = 2 * math.ceil(self.receptive_field / s)
        if overlap // s < need or chunk - overlap < overlap:
            raise ValueError(f"chunking needs overlap_s >= {need * s / SAMPLE_RATE_HZ:g} s (the backbone's receptive "
                             f"field on both sides of a seam) and chunk_s >= 2 * overlap_s; got chunk_s={chunk_s}, "
                             f"overlap_s={overlap_s}")

    @property
    def frame_rate_hz(self) -> float:
        return SAMPLE_RATE_HZ / self.stride

    @property
    def min_samples(self) -> int:
        """Shortest input that gives one frame; shorter clips are zero-padded to it."""
        return self.receptive_field

    def num_frames(self, num_samples: int) -> int:
        n = max(int(num_samples), self.min_samples)
        for k, s in zip(self.kernels, self.strides):
            n = (n - k) // s + 1
        return n

    def effective_precision(self, device: torch.device | str) -> str:
        dev = torch.device(device)
        if self.precision == "auto":
            return "bf16" if dev.type == "cuda" else "fp32"
        return self.precision

    def cache_key(self, layers: Sequence[int], device: torch.device | str) -> dict[str, Any]:
        """What makes cached hidden states valid (hashed into the cache folder name)."""
        return {"cache_version": CACHE_VERSION, "config_hash": self.ref.config_hash,
                "weights_hash": self.ref.weights_hash, "layers": [int(i) for i in layers],
                "normalize": bool(self.ref.normalize), "precision": self.effective_precision(device),
                "chunk_samples": self.chunk_samples, "overlap_samples": self.overlap_samples,
                "sample_rate_hz": SAMPLE_RATE_HZ}

    # -- computing
    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.ref.normalize:
            return x
        mean = x.mean(dim=-1, keepdim=True)
        var = (x - mean).square().mean(dim=-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-7)

    def run(self, x: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """One backbone pass over ``(batch, samples)`` (already normalised) → ``(batch, n_layers, hidden, frames)``."""
        self.forward_calls += 1
        bf16 = self.effective_precision(x.device) == "bf16"
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.model(x, output_hidden_states=True)
        hs = out.hidden_states
        return torch.stack([hs[i] for i in layers], dim=1).transpose(2, 3).float()

    def clip_states(self, x: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """Equal-length clips ``(batch, samples)`` → states; normalised over each whole clip, chunked when long."""
        x = self.normalize_input(x)
        if x.shape[-1] < self.min_samples:
            x = torch.nn.functional.pad(x, (0, self.min_samples - x.shape[-1]))
        if x.shape[-1] <= self.chunk_samples:
            return self.run(x, layers)
        return self._chunked(x, layers)

    def _chunked(self, x: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        return stitch_windows(lambda w: self.run(w, layers), x, stride=self.stride, chunk=self.chunk_samples,
                              overlap=self.overlap_samples, n_out=self.num_frames(x.shape[-1]))

    def hidden_states(self, x: torch.Tensor, layers: Sequence[int], lengths: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(batch, samples)`` (+ real lengths of a zero-padded batch) → ``(states, frame lengths or None)``."""
        if lengths is None or bool((lengths == x.shape[-1]).all()):
            return self.clip_states(x, layers), None
        outs = [self.clip_states(x[i : i + 1, : int(n)], layers)[0] for i, n in enumerate(lengths.tolist())]
        frames = torch.tensor([o.shape[-1] for o in outs], device=x.device)
        t = int(frames.max())
        states = x.new_zeros(len(outs), *outs[0].shape[:2], t)
        for i, o in enumerate(outs):
            states[i, ..., : o.shape[-1]] = o
        return states, frames

    def forward(self, x: torch.Tensor, layers: Sequence[int], lengths: torch.Tensor | None = None):
        return self.hidden_states(x, layers, lengths)

    # -- bundling
    def save_to(self, dest: str | os.PathLike) -> Path:
        """Write a self-contained copy (config, weights, preprocessor config) to ``dest``, atomically."""
        return write_folder(dest, self._fill_copy)

    def _fill_copy(self, tmp: Path) -> None:
        src = Path(self.location)
        if self.ref.kind != "hub" and src.is_dir():
            for name in ("config.json", "preprocessor_config.json", *WEIGHT_FILES):
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            index = next((src / n for n in WEIGHT_FILES[2:] if (src / n).is_file()), None)
            if index is not None:  # sharded checkpoint: copy the shards too
                for shard in set(json.loads(index.read_text()).get("weight_map", {}).values()):
                    shutil.copy2(src / shard, tmp / shard)
        else:
            self.model.save_pretrained(tmp)
            if self.feature_extractor is not None:
                self.feature_extractor.save_pretrained(tmp)


class _EncoderHolder(nn.Module):
    """Gives a Whisper encoder the ``model.encoder.layers`` layout the ssl model's freezing expects."""

    def __init__(self, encoder: whisper.WhisperEncoder):
        super().__init__()
        self.encoder = encoder


class WhisperBackbone(Backbone):
    """Whisper's encoder as a backbone: 16 kHz waveforms → Whisper log-mel (:class:`~emovox.features.WhisperLogMel`)
    → every hidden state at 50 frames/s, at the clip's own length (no 30-s padding).

    The log-mel is computed over the whole clip (its floor follows the clip's maximum); clips longer than
    ``chunk_s`` (at most 30 s, Whisper's context) run through the encoder in windows of mel frames,
    stitched as :func:`stitch_windows`. ``num_layers`` transformer layers, ``hidden_size`` = d_model.
    """

    def __init__(self, encoder: whisper.WhisperEncoder, ref: BackboneRef, *, location: str = "",
                 chunk_s: float = WHISPER_CHUNK_S, overlap_s: float = DEFAULT_OVERLAP_S, precision: str = "auto"):
        nn.Module.__init__(self)
        self.frontend = WhisperLogMel(encoder.dims.n_mels)
        self._setup(_EncoderHolder(encoder), ref, location, None, stride=whisper_weights.HOP_LENGTH * whisper_weights.CONV_STRIDE,
                    receptive_field=WhisperLogMel.n_fft, num_layers=encoder.dims.n_layers,
                    hidden_size=encoder.dims.d_model, chunk_s=chunk_s, overlap_s=overlap_s, precision=precision)

    def _check_chunking(self, chunk: int, overlap: int, chunk_s: float, overlap_s: float) -> None:
        if not (0 < overlap and 2 * overlap <= chunk <= WHISPER_CHUNK_S * SAMPLE_RATE_HZ):
            raise ValueError(f"a Whisper backbone needs 0 < overlap_s and 2 * overlap_s <= chunk_s <= "
                             f"{WHISPER_CHUNK_S:g} s (its context); got chunk_s={chunk_s}, overlap_s={overlap_s}")

    def num_frames(self, num_samples: int) -> int:
        mel = max(int(num_samples), self.min_samples) // whisper_weights.HOP_LENGTH
        return -(-mel // whisper_weights.CONV_STRIDE)

    def cache_key(self, layers: Sequence[int], device: torch.device | str) -> dict[str, Any]:
        return {**super().cache_key(layers, device), "frontend": f"whisper-logmel{self.frontend.n_mels}"}

    def run(self, mel: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """One encoder pass over log-mel ``(batch, n_mels, frames)`` → ``(batch, n_layers, hidden, frames / 2)``."""
        self.forward_calls += 1
        bf16 = self.effective_precision(mel.device) == "bf16"
        with torch.autocast(device_type=mel.device.type, dtype=torch.bfloat16, enabled=bf16):
            hs = self.model.encoder(mel)
        return torch.stack([hs[i] for i in layers], dim=1).transpose(2, 3).float()

    def clip_states(self, x: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        if x.shape[-1] < self.min_samples:
            x = torch.nn.functional.pad(x, (0, self.min_samples - x.shape[-1]))
        mel = self.frontend(x)
        hop = whisper_weights.HOP_LENGTH
        if mel.shape[-1] <= self.chunk_samples // hop:
            return self.run(mel, layers)
        return stitch_windows(lambda w: self.run(w, layers), mel, stride=whisper_weights.CONV_STRIDE,
                              chunk=self.chunk_samples // hop, overlap=self.overlap_samples // hop,
                              n_out=self.num_frames(x.shape[-1]))

    def save_to(self, dest: str | os.PathLike) -> Path:
        """Write the encoder as an emovox Whisper folder (``whisper_encoder.json`` + ``model.safetensors``)."""
        from safetensors.torch import save_file

        enc = self.model.encoder

        def fill(tmp: Path) -> None:
            info = {"format": "emovox-whisper-encoder", **enc.dims.to_dict()}
            (tmp / WHISPER_ENCODER_JSON).write_text(json.dumps(info, indent=1))
            save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp / "model.safetensors"))

        return write_folder(dest, fill)

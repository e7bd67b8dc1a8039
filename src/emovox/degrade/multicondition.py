"""Pooled encoder states of clean and degraded copies of clips, cached: what multi-condition training of a
probe head reads.

A probe needs only each layer's time mean (7 x 512 numbers for Whisper-base), not the full sequences, so each
(clip, degradation, seed) costs one 7-KiB file. Entries are keyed by the clip's bytes, the parsed degradation and
the seed (a clean copy has its own key), in a folder per backbone and layers, written atomically with a
checksum (:class:`emovox.data.ClipCache`): an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.cache import ClipCache, content_key
from .spec import Degrader

CLEAN = "clean"


class PooledStateCache(ClipCache):
    """One float16 ``(n_layers * hidden,)`` vector per (clip, variant): the layers' time means, as
    :class:`PooledEncoder` computes them."""

    info_name = "cache.json"

    def __init__(self, root: str | os.PathLike, encoder: PooledEncoder):
        self.root = Path(root).expanduser()
        self.key = encoder.cache_key
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        super().__init__(self.root / f"pooled-{digest}")
        self.size = encoder.size

    def file_for(self, item) -> Path:
        """``item``: a clip path (its clean copy) or ``(path, variant)``, variant naming degradation and seed."""
        path, variant = item if isinstance(item, tuple) else (item, CLEAN)
        clip = super().file_for(path).stem
        key = hashlib.sha1(f"{clip}\0{variant}".encode()).hexdigest()
        return self.dir / key[:2] / f"{key}.npy"

    def _valid(self, arr: np.ndarray) -> bool:
        return arr.shape == (self.size,)

    def _describe(self) -> dict[str, Any]:
        return {**self.key, "stored": "float16 time mean per layer, (n_layers * hidden,)"}


def copy_seed(path: str | os.PathLike, namespace: str, copy: int) -> int:
    """A clip's seed for its ``copy``-th degraded copy, from the clip's bytes: training and evaluation use
    different ``namespace`` strings, so they never share noise draws or rooms."""
    digest = hashlib.sha1(f"{content_key(path)}\0{namespace}\0{copy}".encode()).hexdigest()
    return int(digest[:12], 16)


def variant_name(degrader: Degrader | None, seed: int | None) -> str:
    return CLEAN if degrader is None else f"{degrader.key()}:{seed}"


class PooledEncoder:
    """A probe model's pooled features on ONNX Runtime: the model's runtime graph with its pooled row (the input
    of the probe's standardisation) as an extra output. ``pooled(wave)`` → float32 ``(size,)``."""

    def __init__(self, model_dir: str | os.PathLike, *, threads: int | None = None):
        from ..runtime.onnx_backend import OnnxModel

        model = OnnxModel(Path(model_dir) / "onnx", threads=threads)
        self.model = model
        self.output = model.pooled_output
        if self.output is None:
            raise ValueError(f"{model_dir}: not a probe model (no pooled features in its runtime graph)")
        self.size = model.pooled_size
        self.cache_key = {"encoder_graph": model.pooled_key, "pooling": "time mean per layer", "runtime": "onnxruntime"}

    def pooled(self, wave: np.ndarray) -> np.ndarray:
        return self.model.pooled_features(np.asarray(wave, dtype=np.float32)[None])[0]


class TorchPooledEncoder:
    """A probe model's pooled features on its torch backbone (any backbone ``--model ssl`` takes: Whisper,
    wav2vec2, HuBERT, WavLM), with :class:`PooledEncoder`'s interface. ``model``: an
    :class:`emovox.models.ssl.SSLHybrid` with a probe head (``mean``: the layers' time means, ``stats``: and their
    log standard deviations). The cache key holds the backbone's identity (config and weights hashes, layers,
    precision, chunking), the pooling and the runtime, so entries of different backbones or heads never mix."""

    def __init__(self, model, device="cpu"):
        self.model, self.device = model, device
        stats = model.head_kind == "stats"
        self.size = len(model.layers) * model.hidden_dim * (2 if stats else 1)
        self.cache_key = {**model.backbone.cache_key(model.layers, device), "runtime": "torch",
                          "pooling": "time mean and log std per layer" if stats else "time mean per layer"}

    def pooled(self, wave: np.ndarray) -> np.ndarray:
        """The clip's pooled row as training computes it: float16 states (what the hidden-state cache holds),
        pooled in float32, rounded to float16 (what the pooled cache holds: the same row cached or not)."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None].to(self.device)
            states = self.model.backbone.clip_states(x, self.model.layers)[0].cpu().numpy().astype(np.float16)
        return self.model.pooled_rows([states])[0].astype(np.float16).astype(np.float32)


#: :meth:`Degrader.degrade` swaps the global random generators while it runs: one degradation at a time.
DEGRADE_LOCK = threading.Lock()


@dataclass
class DegradedCopy:
    """Copy number ``copy`` of every clip, degraded by ``degrader`` with the clip's :func:`copy_seed`: the
    ``variant`` that the feature and hidden-state caches' loaders take (``emovox.data.cache.load_features``,
    ``emovox.data.backbone_data.load_hidden_states``). ``item(path)`` is its cache entry ``(path, variant)``,
    keyed by the clip's bytes, the parsed degradation, the seed and ``pool`` (what babble was drawn from);
    ``load(row, sample_rate_hz, max_duration_s)`` its waveform (the row's speaker is left out of babble)."""

    degrader: Degrader
    copy: int
    namespace: str = "train"
    pool: str = ""
    _seeds: dict = field(default_factory=dict, repr=False)

    def seed(self, path: str | os.PathLike) -> int:
        p = os.path.abspath(os.fspath(path))
        st = os.stat(p)
        stamp = (p, st.st_size, st.st_mtime_ns)
        if stamp not in self._seeds:
            self._seeds[stamp] = copy_seed(p, self.namespace, self.copy)
        return self._seeds[stamp]

    def variant(self, path: str | os.PathLike) -> str:
        name = variant_name(self.degrader, self.seed(path))
        return f"{name}:{self.pool}" if self.pool else name

    def item(self, path: str | os.PathLike) -> tuple[str, str]:
        return os.fspath(path), self.variant(path)

    def load(self, row: Any, sample_rate_hz: int = 16000, max_duration_s: float | None = None) -> np.ndarray:
        from ..audio import load_audio

        path = os.fspath(row.path if hasattr(row, "path") else row)
        wave = load_audio(path, sample_rate_hz=16000, max_duration_s=max_duration_s)
        with DEGRADE_LOCK:
            wave, _ = self.degrader.degrade(wave, self.seed(path), speaker=getattr(row, "speaker", None))
        if sample_rate_hz != 16000:  # degradations work at 16 kHz; the features' rate after them
            wave = load_audio(wave, source_sample_rate_hz=16000, sample_rate_hz=sample_rate_hz, max_duration_s=None)
        return wave


def pooled_rows(rows: Sequence[Any], cache: PooledStateCache, encoder: PooledEncoder, *,
                degrader: Degrader | None = None, namespace: str = "train", copy: int = 0,
                progress: Callable[[int, int], None] | None = None,
                compute: bool = True, pool: str = "") -> tuple[np.ndarray, list[int]]:
    """Pooled states of ``rows`` (clean when ``degrader`` is None, else their ``copy``-th degraded copy), from the
    cache or computed and cached. Returns ``(array (n_kept, size), kept row indices)``; unreadable clips are
    left out, and so are uncached ones when ``compute`` is False (``encoder`` may then be None). ``pool``: what
    babble is drawn from, part of a degraded copy's key (:class:`DegradedCopy`)."""
    from ..audio import AudioError, load_audio

    out, kept = [], []
    for i, row in enumerate(rows):
        path = str(row.path)
        seed = None if degrader is None else copy_seed(path, namespace, copy)
        variant = variant_name(degrader, seed)
        item = (path, f"{variant}:{pool}" if pool and degrader is not None else variant)
        vec = cache.get(item)
        if vec is None and not compute:
            continue
        if vec is None:
            try:
                wave = load_audio(path, sample_rate_hz=16000)
            except (AudioError, OSError):
                continue
            if degrader is not None:
                wave, _ = degrader.degrade(wave, seed, speaker=getattr(row, "speaker", None))
            vec = encoder.pooled(wave)
            try:
                cache.put(item, vec)
            except OSError:
                pass  # a read-only or full cache must not stop the job
        out.append(np.asarray(vec, dtype=np.float32))
        kept.append(i)
        if progress is not None:
            progress(i + 1, len(rows))
    return (np.stack(out) if out else np.zeros((0, cache.size), np.float32)), kept


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, n_labels: int, c: float,
              sample_weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The probe head fit on pooled rows: standardisation from these rows (their mix of clean and degraded
    copies), then a class-balanced multinomial logistic regression with inverse L2 strength ``c`` (scikit-learn's
    L-BFGS); labels without clips get a -30 bias; ``sample_weight`` (e.g. clean rows weighted as much as all their
    degraded copies) multiplies the class balancing. Returns ``mean``, ``std``, ``weight``, ``bias``."""
    from sklearn.linear_model import LogisticRegression

    mean = x_train.mean(axis=0)
    std = np.maximum(x_train.std(axis=0), 1e-3)
    clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
    clf.fit((x_train - mean) / std, y_train, sample_weight=sample_weight)
    weight, bias = np.zeros((n_labels, x_train.shape[1])), np.full(n_labels, -30.0)
    weight[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32), "weight": weight.astype(np.float32),
            "bias": bias.astype(np.float32)}


def probe_logits(probe: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """What the probe head computes: ``(x - mean) / std @ weight.T + bias``."""
    return ((x - probe["mean"]) / probe["std"]) @ probe["weight"].T + probe["bias"]

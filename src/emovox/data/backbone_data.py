"""Data for the backbone models (``--model ssl``): the hidden-state cache, decoded waveforms, batches,
and what the trainer and the evaluator need to train and evaluate a head on a pretrained backbone.

This is the backbone counterpart of :mod:`emovox.data.cache` (log-mel features, ``FeatureCache``,
``BatchMaker``); the networks themselves live in :mod:`emovox.models.ssl` and the encoders in
:mod:`emovox.pretrained.backbones`, which import nothing from here.

Hidden-state cache
    :class:`HiddenStateCache` stores each clip's selected hidden states as one float16 ``.npy``
    of shape ``(n_layers, hidden, frames)`` under ``ROOT/ssl-<key>/<k[:2]>/<k>.npy``; see
    :mod:`emovox.pretrained.backbones` for the key and the sizes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovox.audio import AudioError, load_audio
from emovox.data.cache import (
    ClipCache,
    FeatureCache,
    FeatureSet,
    cached_lookup,
    default_cache_dir,
    progress_enabled,
    row_path,
)
from emovox.defaults import MAX_TRAINING_CLIP_S
from emovox.errors import TrainingError
from emovox.models import build_model
from emovox.models.ssl import PROBE_HEADS, SSLHybrid
from emovox.pretrained.backbones import SAMPLE_RATE_HZ, Backbone
from emovox.training import distributed

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Cache



def cache_root(cache) -> Path | None:
    """The cache folder from what the trainer and evaluator accept: a FeatureCache, a folder,
    True (the default folder) or None/False (no cache)."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return default_cache_dir()
    root = cache.root if isinstance(cache, FeatureCache) else cache
    return Path(root).expanduser()


class HiddenStateCache(ClipCache):
    """One float16 ``.npy`` ``(n_layers, hidden, frames)`` per clip; see the module docstring."""

    info_name = "cache.json"

    def __init__(self, root: str | os.PathLike, backbone: Backbone, layers: Sequence[int], device="cpu"):
        self.root = Path(root).expanduser()
        self.key = backbone.cache_key(layers, device)
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        super().__init__(self.root / f"ssl-{digest}")
        self.shape = (len(layers), backbone.hidden_size)
        self.describe = backbone.ref.describe()

    def _valid(self, arr: np.ndarray) -> bool:
        return arr.ndim == 3 and tuple(arr.shape[:2]) == self.shape and arr.dtype == np.float16

    def _describe(self) -> dict[str, Any]:
        return {**self.key, "stored": "float16 (n_layers, hidden, frames) per clip", "backbone": self.describe}

    def get(self, path: str | os.PathLike, *, mmap: bool = True) -> np.ndarray | None:
        """The clip's states, memory-mapped read-only, or None."""
        return super().get(path, mmap=mmap)


@dataclass
class _Decoded:
    index: int
    wave: np.ndarray | None = None
    error: str | None = None


def _decode_all(paths: Sequence[str], todo: Sequence[int], *, num_workers: int | None, max_duration_s: float | None,
                load=None):
    """Decode clips in a thread pool, yielding them in order (a few ahead of the consumer); ``load(i)``, when
    given, gives clip ``i``'s waveform instead (a degraded copy)."""
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> _Decoded:
        try:
            if load is not None:
                return _Decoded(i, load(i))
            return _Decoded(i, load_audio(paths[i], sample_rate_hz=SAMPLE_RATE_HZ, max_duration_s=max_duration_s))
        except (AudioError, OSError) as e:
            return _Decoded(i, error=str(e))

    workers = max(1, num_workers if num_workers is not None else min(4, os.cpu_count() or 1))
    if workers == 1:
        yield from map(work, todo)
        return
    with ThreadPoolExecutor(max_workers=workers) as ex:
        ahead = 2 * workers
        futures = [ex.submit(work, i) for i in todo[:ahead]]
        for k in range(len(todo)):
            if k + ahead < len(todo):
                futures.append(ex.submit(work, todo[k + ahead]))
            yield futures[k].result()
            futures[k] = None  # type: ignore[call-overload]


def load_hidden_states(rows: Sequence[Any], backbone: Backbone, layers: Sequence[int], *, cache=None,
                       device: torch.device | str = "cpu", num_workers: int | None = None,
                       progress: bool | None = None, desc: str = "backbone states",
                       max_duration_s: float | None = MAX_TRAINING_CLIP_S, variant=None):
    """Hidden states ``(n_layers, hidden, frames)`` float16 for ``rows``, from the cache or computed.

    Returns an :class:`emovox.data.cache.FeatureSet` (``features``: memory-mapped cache files when a
    cache is used, in-memory float16 arrays otherwise; ``decoded``: clips run through the
    backbone). Unreadable clips are left out and listed in ``errors``. ``variant``: each clip's degraded copy
    instead (as in :func:`emovox.data.cache.load_features`), cached under its own key.
    """
    from tqdm.auto import tqdm

    root = cache_root(cache)
    store = HiddenStateCache(root, backbone, layers, device) if root is not None else None
    paths = [row_path(r) for r in rows]
    items = paths if variant is None else [variant.item(p) for p in paths]
    results, todo = cached_lookup(store, items)
    errors: dict[int, str] = {}
    load = None if variant is None else (lambda i: variant.load(rows[i], SAMPLE_RATE_HZ, max_duration_s))
    if todo:
        bar = tqdm(total=len(todo), desc=desc, unit="clip", disable=not progress_enabled(progress),
                   dynamic_ncols=True, leave=False)
        with torch.inference_mode():
            for d in _decode_all(paths, todo, num_workers=num_workers, max_duration_s=max_duration_s, load=load):
                if d.error is not None:
                    errors[d.index] = d.error
                else:
                    x = torch.from_numpy(np.ascontiguousarray(d.wave, dtype=np.float32))[None].to(device)
                    states = backbone.clip_states(x, layers)[0].cpu().numpy().astype(np.float16)
                    results[d.index] = states
                    if store is not None:
                        try:
                            f = store.put(items[d.index], states)
                            results[d.index] = np.load(f, mmap_mode="r", allow_pickle=False)
                        except OSError:
                            pass  # a read-only or full cache must not stop training
                bar.update(1)
        bar.close()
    keep = [i for i in range(len(paths)) if results[i] is not None]
    return FeatureSet(features=[results[i] for i in keep], rows=[rows[i] for i in keep], indices=keep,
                      errors=[(paths[i], errors[i]) for i in sorted(errors)], decoded=len(todo) - len(errors))


def load_waveforms(rows: Sequence[Any], *, num_workers: int | None = None, progress: bool | None = None,
                   desc: str = "decoding", max_duration_s: float | None = MAX_TRAINING_CLIP_S):
    """Decoded 16 kHz float32 waveforms for ``rows`` (fine-tuning runs the backbone on them every epoch)."""
    from tqdm.auto import tqdm

    paths = [row_path(r) for r in rows]
    results: list[np.ndarray | None] = [None] * len(paths)
    errors: dict[int, str] = {}
    bar = tqdm(total=len(paths), desc=desc, unit="clip", disable=not progress_enabled(progress),
               dynamic_ncols=True, leave=False)
    for d in _decode_all(paths, list(range(len(paths))), num_workers=num_workers, max_duration_s=max_duration_s):
        if d.error is not None:
            errors[d.index] = d.error
        else:
            results[d.index] = np.ascontiguousarray(d.wave, dtype=np.float32)
        bar.update(1)
    bar.close()
    keep = [i for i in range(len(paths)) if results[i] is not None]
    return FeatureSet(features=[results[i] for i in keep], rows=[rows[i] for i in keep], indices=keep,
                      errors=[(paths[i], errors[i]) for i in sorted(errors)], decoded=len(keep))


# ---------------------------------------------------------------------------------------------
# Batches (the trainer's BatchMaker interface: train_batch(items, rng), eval_batch(items))


def collate_nd(items: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(..., T_i)`` tensors → ``(B, ..., max T)`` zero-padded, and lengths (None when all equal)."""
    lengths = torch.tensor([it.shape[-1] for it in items], dtype=torch.long)
    t = int(lengths.max())
    out = items[0].new_zeros(len(items), *items[0].shape[:-1], t)
    for i, it in enumerate(items):
        out[i, ..., : it.shape[-1]] = it
    return out, (None if bool((lengths == t).all()) else lengths)


def _crop(x: np.ndarray, size: int | None, rng: np.random.Generator | None) -> np.ndarray:
    t = x.shape[-1]
    if size is None or t <= size:
        return x
    start = int(rng.integers(0, t - size + 1)) if rng is not None else (t - size) // 2
    return x[..., start : start + size]


class StateBatches:
    """Cached hidden states (float16 ``(n_layers, hidden, frames)``, memory-mapped) → float32 batches;
    training crops ``crop_frames`` at a random offset (clips shorter than that are zero-padded and masked)."""

    def __init__(self, crop_frames: int | None = None):
        self.crop_frames = crop_frames

    def _batch(self, items, rng) -> tuple[torch.Tensor, torch.Tensor | None]:
        return collate_nd([torch.from_numpy(np.asarray(_crop(x, self.crop_frames, rng), dtype=np.float32))
                           for x in items])

    def train_batch(self, items, rng: np.random.Generator):
        return self._batch(items, rng)

    def eval_batch(self, items):
        return collate_nd([torch.from_numpy(np.asarray(x, dtype=np.float32)) for x in items])


class WaveBatches:
    """Waveforms (float32 ``(samples,)``) → ``(batch, 1, samples)`` batches with lengths in samples;
    training crops ``crop_samples`` at a random offset (fine-tuning runs the backbone on them)."""

    def __init__(self, crop_samples: int | None = None):
        self.crop_samples = crop_samples

    def train_batch(self, items, rng: np.random.Generator):
        return collate_nd([torch.from_numpy(np.ascontiguousarray(_crop(x, self.crop_samples, rng)))[None]
                           for x in items])

    def eval_batch(self, items):
        return collate_nd([torch.from_numpy(np.ascontiguousarray(x))[None] for x in items])


# ---------------------------------------------------------------------------------------------
# Trainer and evaluator integration


class SSLTraining:
    """What :func:`emovox.training.run.train_model` needs for ``--model ssl``.

    Builds the model (loading the backbone), bundles the backbone into the output folder when the
    model kwargs ask for it (``bundle_backbone=True``), and provides the data: frozen backbones
    give the cached hidden states (computed once per clip, :func:`load_hidden_states`);
    fine-tuned ones (``finetune_layers > 0``) give decoded waveforms, run through the backbone at
    every step. ``load``, ``train_batches`` and ``eval_batches`` stand in for the log-mel
    ``load_features`` and ``BatchMaker``s.
    """

    def __init__(self, cfg, *, n_classes: int, out_dir: str | os.PathLike, cache=None, num_workers: int | None = None,
                 progress: bool | None = None, echo=None):
        feats = cfg.feature_config()
        if feats.kind != "waveform" or feats.sample_rate_hz != SAMPLE_RATE_HZ:
            raise TrainingError(f"the ssl model takes 16 kHz raw samples: features must be the 'waveform' preset, "
                                f"got kind {feats.kind!r} at {feats.sample_rate_hz} Hz")
        if cfg.augment:
            raise TrainingError("--use_augmentation works on log-mel features; the ssl model trains on backbone "
                                "states (cached when frozen): leave it out")
        kwargs = dict(cfg.model_kwargs)
        bundle = bool(kwargs.pop("bundle_backbone", False))
        if "backbone" not in kwargs:
            raise TrainingError("the ssl model needs a backbone: --backbone HF_ID_OR_FOLDER")
        try:
            self.model = build_model("ssl", n_features=1, n_classes=n_classes, **kwargs)
        except ValueError as e:  # BackboneError and bad settings: say it as a training error
            raise TrainingError(str(e)) from e
        self.device = cfg.torch_device()
        self.model.to(self.device)
        backbone = self.model.backbone
        say = echo or log.info
        ref = backbone.ref
        say(f"backbone {ref.describe()}: input normalisation {ref.normalize_from}; "
            + (f"fine-tuning the top {self.model.finetune_layers} layer(s)" if self.model.finetune_layers
               else "frozen, hidden states cached per clip"))
        if bundle:
            dest = self.model.bundle_backbone(out_dir, write=distributed.is_rank0())
            distributed.barrier()
            say(f"backbone bundled into {dest}")
        self.cache = cache_root(cache)
        self._pooled: dict[int, np.ndarray] = {}
        # multi-condition training of a probe head (--augment): the degraded copies' pooled rows and, for each,
        # its clip's position in the training set (emovox.training.multicondition)
        self.extra_pooled: tuple[np.ndarray, np.ndarray] | None = None
        self.num_workers = num_workers
        self.progress = progress
        self.finetune = self.model.finetune_layers > 0
        crop = cfg.crop_s
        if self.finetune:
            self.train_batches = WaveBatches(None if crop is None else round(crop * SAMPLE_RATE_HZ))
            self.eval_batches = WaveBatches(None)
        else:
            self.train_batches = StateBatches(None if crop is None else max(1, round(crop * backbone.frame_rate_hz)))
            self.eval_batches = StateBatches(None)

    @property
    def is_probe(self) -> bool:
        """The ``mean`` head is a linear probe: fit in closed form on pooled states, not by epochs of SGD."""
        return self.model.head_kind in PROBE_HEADS

    def prepare(self, train_set) -> None:
        """Fit what the head computes from the training data before training (the ``mean`` head's scaling)."""
        if self.is_probe:
            if self.finetune:
                raise ValueError(f"the {self.model.head_kind!r} head standardises frozen states: it cannot fine-tune "
                                 f"the backbone")
            self.model.fit_pooled_stats(self.pooled_train(train_set)[0])

    def pooled_train(self, train_set, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The training set's pooled rows and labels, with the degraded copies' after the clean ones (--augment):
        what the probe's standardisation and fit read."""
        rows = self.pooled(train_set)
        if self.extra_pooled is None:
            return rows, y
        extra, index = self.extra_pooled
        return np.concatenate([rows, extra]), (None if y is None else np.concatenate([y, y[index]]))

    def pooled(self, feature_set) -> np.ndarray:
        """A FeatureSet's pooled rows for the ``mean`` head (computed once per set: reading the cached states
        is what costs)."""
        key = id(feature_set)
        if key not in self._pooled:
            self._pooled[key] = self.model.pooled_rows(feature_set.features)
        return self._pooled[key]

    @property
    def uses_cache(self) -> bool:
        return self.cache is not None and not self.finetune

    def load(self, rows, *, desc: str = "features", variant=None):
        """A :class:`emovox.data.cache.FeatureSet` of cached states (frozen) or waveforms (fine-tuning);
        ``variant``: the clips' degraded copies (frozen backbones only: fine-tuning degrades per step)."""
        if self.finetune:
            return load_waveforms(rows, num_workers=self.num_workers, progress=self.progress, desc=desc)
        return load_hidden_states(rows, self.model.backbone, self.model.layers, cache=self.cache, device=self.device,
                                  num_workers=self.num_workers, progress=self.progress, desc=desc, variant=variant)


def evaluation_data(model: SSLHybrid, rows, *, cache=None, num_workers: int | None = None,
                    progress: bool | None = None):
    """``(FeatureSet, batch maker)`` to evaluate an ssl model: cached states for a frozen backbone
    (shared with training's cache), waveforms for a fine-tuned one."""
    device = next(model.parameters()).device
    if model.finetune_layers:
        return load_waveforms(rows, num_workers=num_workers, progress=progress, desc="evaluate"), WaveBatches(None)
    fs = load_hidden_states(rows, model.backbone, model.layers, cache=cache, device=device, num_workers=num_workers,
                            progress=progress, desc="evaluate")
    return fs, StateBatches(None)

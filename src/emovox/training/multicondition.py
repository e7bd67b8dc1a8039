"""Multi-condition training (``emovox train --augment SPEC``): each training clip also as K degraded copies.

The degradations are :mod:`emovox.degrade`'s (a preset such as ``real-world``, a chain, a YAML/JSON file); babble
is made of the *training* split's clips of other speakers, never validation or test clips. Copy ``k`` of a clip
has the seed :func:`emovox.degrade.multicondition.copy_seed` ``(clip, "train", k)``, so it is the same in every run
and is cached like the clean clip, under a key of (clip bytes, degradation key, seed, babble pool):

- frame models (cnn, cnn2d, crnn, fast, lstm): the copies' log-mel frames in the feature cache
  (:class:`emovox.data.cache.FeatureCache`, the clean entries' folder); the standardisation statistics are fitted
  on the clean clips and the copies together (the mix training sees);
- ``--model ssl`` with a probe head (``mean``, ``stats``): only the copies' pooled rows
  (:class:`emovox.degrade.multicondition.PooledStateCache` on the torch backbone,
  :class:`~emovox.degrade.multicondition.TorchPooledEncoder`); the probe's standardisation and fit read the clean
  and degraded rows together;
- other frozen ssl heads: the copies' hidden-state sequences in the hidden-state cache;
- fine-tuned backbones: the waveform degraded per step (nothing cached; a fresh copy every epoch).

Every epoch, each clip's sample is drawn uniformly from {clean, copy 1..K} by a generator seeded with (seed,
epoch), so a resumed run replays a straight run. Validation and test stay clean.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emovox.data.cache import load_features
from emovox.degrade import Degrader, parse_spec
from emovox.degrade.conditions import noise_files
from emovox.degrade.multicondition import (
    DEGRADE_LOCK,
    DegradedCopy,
    PooledStateCache,
    TorchPooledEncoder,
    copy_seed,
    pooled_rows,
)
from emovox.errors import TrainingError
from emovox.training import distributed as ddp

MAX_COPIES = 64
MIX_SALT = 0x6D6978  # the mix's generator is its own, apart from crops and augmentation


def kinds_of(degrader: Degrader) -> set[str]:
    return {s.kind for stage in degrader.stages for chain in stage.options for s in chain}


def check_augment(spec: str | None, copies: int | None, noise_dir: str | None) -> Degrader:
    """Refuse a bad ``--augment`` / ``--augment-copies`` / ``--noise-dir`` before any training work: the
    degradation library's message (it lists the accepted forms), or a folder that holds no readable audio."""
    if spec is None:
        given = [flag for flag, v in (("--augment-copies", copies), ("--noise-dir", noise_dir)) if v is not None]
        raise TrainingError(f"{' and '.join(given)}: only with --augment SPEC")
    degrader = parse_spec(spec, noise_dir=noise_dir)
    if copies is not None and not (isinstance(copies, int) and 1 <= copies <= MAX_COPIES):
        raise TrainingError(f"--augment-copies must be a whole number from 1 to {MAX_COPIES}, got {copies!r}")
    if noise_dir is not None:
        noise_files(noise_dir)  # an empty, missing or non-audio folder: the library's message
        if "noise" not in kinds_of(degrader):
            raise TrainingError(f"--noise-dir {noise_dir}: its recordings are used by the 'noise' degradation, which "
                                f"--augment {spec} does not have; add a step such as noise:0..20 (a chain "
                                f"'noise:0..20+room:0.3..1', or an entry of a YAML/JSON spec's steps)")
    return degrader


@dataclass
class MultiCondition:
    """The degraded copies of the training set and the per-epoch mix (see the module docstring)."""

    degrader: Degrader
    copies: int  # K
    spec: str
    seed: int
    pool: str = ""  # what babble is drawn from, part of the copies' cache keys
    features: list[list[Any]] | None = None  # per copy, aligned with the training set (cached families)
    on_the_fly: bool = False  # fine-tuned backbones: degrade each step's waveforms
    cost: dict[str, Any] = field(default_factory=dict)
    _keep: Any = None  # a temporary folder for the probe's pooled rows when no cache is used
    _choice: tuple[int, np.ndarray] | None = None

    def describe(self) -> dict[str, Any]:
        """What model_meta.json records: how the model was trained."""
        return {"spec": self.spec, "description": self.degrader.describe(), "copies": self.copies,
                "key": self.degrader.key(), "noise_dir": None if self.degrader.sources.noise_dir is None
                else str(self.degrader.sources.noise_dir),
                "mix": f"each epoch, each training clip drawn uniformly from the clean clip and its {self.copies} "
                       f"degraded cop{'y' if self.copies == 1 else 'ies'}; validation and test clean",
                **self.cost}

    def choice(self, epoch: int, n: int) -> np.ndarray:
        """Which version each of the ``n`` training clips gives in ``epoch``: 0 clean, k copy k."""
        if self._choice is None or self._choice[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, MIX_SALT])
            self._choice = (epoch, rng.integers(0, self.copies + 1, size=n))
        return self._choice[1]

    def items(self, train_set, idx, epoch: int) -> list[Any]:
        """The training items of clips ``idx`` in ``epoch``."""
        chosen = self.choice(epoch, len(train_set.features))
        out = []
        for i in idx:
            k = int(chosen[i])
            if k == 0:
                out.append(train_set.features[i])
            elif self.features is not None:
                out.append(self.features[k - 1][i])
            else:  # fine-tuning: a copy of its own every epoch (nothing is cached)
                row = train_set.rows[i]
                with DEGRADE_LOCK:
                    wave, _ = self.degrader.degrade(train_set.features[i],
                                                    copy_seed(row.path, "train", epoch * self.copies + k - 1),
                                                    speaker=getattr(row, "speaker", None))
                out.append(np.ascontiguousarray(wave, dtype=np.float32))
        return out

    def copy(self, k: int) -> DegradedCopy:
        return DegradedCopy(self.degrader, k, pool=self.pool)


def training_degrader(cfg, train_rows) -> tuple[Degrader, str]:
    """The run's degrader, babble drawn from ``train_rows`` (the training split's clips, each clip's own speaker
    left out), and the pool's tag (empty when the spec has no babble)."""
    paths = [str(r.path) for r in train_rows]
    degrader = parse_spec(cfg.augment_spec, babble=paths, babble_speakers=[getattr(r, "speaker", None) for r in
                                                                          train_rows], noise_dir=cfg.noise_dir)
    pool = ""
    if "babble" in kinds_of(degrader):
        pool = hashlib.sha1("\n".join(sorted(paths)).encode()).hexdigest()[:12]
    return degrader, pool


def prepare_multicondition(cfg, train_set, *, hooks, feat_cfg, cache, progress, say) -> MultiCondition:
    """Compute (or read from the caches) the training set's degraded copies for the model family."""
    degrader, pool = training_degrader(cfg, train_set.rows)
    k = cfg.augment_copies or degrader.copies
    multi = MultiCondition(degrader, k, cfg.augment_spec, cfg.seed, pool)
    say(f"--augment {cfg.augment_spec}: {k} degraded cop{'y' if k == 1 else 'ies'} of each training clip "
        f"({degrader.describe()}); each epoch a clip is drawn from the clean one and its copies"
        + (f"; babble from {len(train_set.rows)} training clips of other speakers" if pool else "")
        + "; validation stays clean")
    rows, t = train_set.rows, time.perf_counter()
    computed = 0
    if hooks is not None and hooks.finetune:
        multi.on_the_fly = True
        multi.cost = {"cached": False, "computed": 0}
        return multi
    if hooks is not None and hooks.is_probe:
        computed = _pooled_copies(multi, hooks, rows, progress)
    else:
        multi.features = []
        shared = hooks.uses_cache if hooks is not None else cache not in (None, False)
        for c in range(k):
            def load(part, c=c):
                desc = f"degraded copy {c + 1}/{k}"
                if hooks is not None:
                    return hooks.load(part, desc=desc, variant=multi.copy(c))
                return load_features(part, feat_cfg, cache=cache, num_workers=cfg.num_workers, progress=progress,
                                     desc=desc, variant=multi.copy(c))

            ddp.warm_cache(load, rows, enabled=shared)
            fs = load(rows)
            computed += fs.decoded
            features = list(train_set.features)  # a copy that could not be made (none expected): the clean clip
            for j, i in enumerate(fs.indices):
                features[i] = fs.features[j]
            multi.features.append(features)
    seconds = time.perf_counter() - t
    total = k * len(rows)
    multi.cost = {"cached": True, "copies_computed": computed, "copies_from_cache": total - computed,
                  "seconds": round(seconds, 2)}
    if computed:
        multi.cost["seconds_per_copy"] = round(seconds / computed, 4)
    say(f"degraded copies: {computed} computed, {total - computed} read from the cache, {seconds:.1f} s"
        + (f" ({seconds / computed:.3f} s per copy)" if computed else ""))
    return multi


def _pooled_copies(multi: MultiCondition, hooks, rows, progress) -> int:
    """A probe head's copies: pooled rows only (7 x 512 numbers per clip for Whisper-base, not the sequences),
    in a PooledStateCache beside the hidden states. Sets ``hooks.extra_pooled``; returns the rows computed."""
    root = hooks.cache
    if root is None:
        multi._keep = tempfile.TemporaryDirectory(prefix="emovox-pooled-")
        root = multi._keep.name
    encoder = TorchPooledEncoder(hooks.model, hooks.device)
    store = PooledStateCache(root, encoder)
    parts, index = [], []
    for c in range(multi.copies):
        x, kept = pooled_rows(rows, store, encoder, degrader=multi.degrader, copy=c, pool=multi.pool)
        parts.append(x)
        index += kept
    hooks.extra_pooled = (np.concatenate(parts), np.asarray(index, dtype=np.int64))
    return store.misses

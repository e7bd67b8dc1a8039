"""Training and evaluation data: a disk cache of features, augmentation, batching.

Clips are decoded (:func:`emovox.audio.load_audio`) and featurised once; the result is cached on
disk and every later epoch, run or evaluation reads the cache instead of decoding audio again.

What is cached
    The **log-mel** frames ``(n_mels, frames)`` of the whole clip, computed by the same
    :class:`emovox.features.LogMel` module the model pipeline uses, with the feature config's
    settings (for MFCC configs: the log-mel under the MFCC, with the streaming MFCC-LSTM's all-zero frames already
    skipped; the DCT is a cheap matrix product applied per batch by :func:`model_features`).
    Caching the log-mel rather than the final features lets augmentation work in the power domain
    (noise at an SNR, gain) for MFCC models too.

Cache key and store
    One ``.npy`` per clip under ``CACHE_DIR/<config hash>/<k[:2]>/<k>.npy`` where ``k`` hashes the
    clip's absolute path, size and modification time, and the config hash covers every front-end
    setting that changes the frames (sample rate, FFT, hop, mels, floor, top_db, zero-frame
    skipping) plus :data:`CACHE_VERSION`. Edited, moved or touched files are featurised again.
    Default ``CACHE_DIR``: ``$EMOVOX_CACHE_DIR`` or ``~/.cache/emovox/features``.

Precision
    Frames are stored as float16 (and rounded to float16 when no cache is used, so results do not
    depend on whether the cache is on). Log-mel values lie in [-100, +60] dB; float16's spacing is
    at most 2^-5 dB = 0.031 dB below 64 dB (0.0625 dB for |values| in [64, 128)), so the rounding
    error is at most 0.016 dB (0.031 dB) — about 1/1000 of a feature's standard deviation after
    normalisation, far below anything a model can learn from. ``tests/training/test_training.py`` checks that
    cached features give the pipeline's logits.

Augmentation (training data only, :class:`AugmentConfig`), all in the log-mel domain so it works
on cached features:

- **time shift**: every training crop starts at a random frame (fixed-length crops, default 3 s);
  fixed-input models (``num_frames``) also place short clips at a random offset in the padding;
- **speed perturbation** with rate ``r``: frames resampled along time by ``1/r`` (linear
  interpolation) and the mel axis warped so that every frequency is multiplied by ``r`` — what
  ``sox speed r`` does to a waveform (tempo and pitch change together). An approximation: the
  warp interpolates between mel bands, so it slightly smooths the spectrum;
- **gain**: a uniform offset in dB (exact for log-mel: ``10 log10(g² P) = L + 20 log10 g``);
- **additive noise** at a random SNR: white or pink noise added in the mel-power domain,
  ``P + Pn``, where ``Pn`` has the noise's expected mel spectrum scaled to the SNR (signal power
  measured as the crop's mean mel power) times Gamma-distributed fluctuations with the effective
  number of FFT bins per band as shape (the distribution of a noise periodogram summed over a
  band). The signal × noise cross term is left out (zero mean);
- **SpecAugment**: time masks, and frequency masks for log-mel models (MFCC coefficients are not
  frequency bands, so MFCC models get time masks only), filled with 0 (the mean) after normalisation;
- **mixup** is applied by the training loop (it needs the labels).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from emovox.atomic import write_bytes
from emovox.audio import AudioError, load_audio
from emovox.defaults import MAX_TRAINING_CLIP_S, cache_env
from emovox.features import (
    FeatureConfig,
    FeatureStats,
    LogMel,
    Normalize,
    dct_matrix,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    normalize_level,
    prepare_input,
)
from emovox.frames import compact_frames, fix_frames, nonzero_frame_mask, pad_to_one_frame

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$EMOVOX_CACHE_DIR`` (or the deprecated ``$EMOVOX_CACHE``), else ``~/.cache/emovox/features``."""
    env = cache_env()
    return env if env is not None else Path.home() / ".cache" / "emovox" / "features"


def cached_config(cfg: FeatureConfig) -> FeatureConfig:
    """The log-mel front-end whose frames are cached for ``cfg`` (MFCC configs: the log-mel under it)."""
    return cfg.replace(kind="logmel", n_mfcc=FeatureConfig.n_mfcc, num_frames=None,
                       skip_zero_frames=cfg.kind == "mfcc" and cfg.skip_zero_frames,
                       level_db=None, level_max_gain_db=FeatureConfig.level_max_gain_db)


def config_hash(cfg: FeatureConfig) -> str:
    frames = cached_config(cfg).to_dict()
    for name in ("level_db", "level_max_gain_db"):  # applied after the cache (and newer than it)
        del frames[name]
    for name in ("peak_normalize", "librosa_per_frame"):  # newer than the cache: left out when off, so
        if not frames[name]:  # caches written before them stay valid
            del frames[name]
    blob = json.dumps({"cache_version": CACHE_VERSION, **frames}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _logmel_module(cached: FeatureConfig) -> LogMel:
    return LogMel(cached).eval()


def compute_logmel(wave: np.ndarray | torch.Tensor, cfg: FeatureConfig) -> np.ndarray:
    """Log-mel frames ``(n_mels, frames)`` (float16) of one clip at ``cfg.sample_rate_hz``: what is cached."""
    c = cached_config(cfg)
    x = pad_to_one_frame(torch.as_tensor(np.ascontiguousarray(wave, dtype=np.float32)).reshape(1, -1), c)
    with torch.no_grad():
        lm = _logmel_module(c)(x)[0]
        if c.skip_zero_frames:
            lm = compact_frames(lm[None], nonzero_frame_mask(x, c))[0][0]
    return lm.numpy().astype(np.float16)


def model_features(logmel: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Cached log-mel ``(..., n_mels, frames)`` → the model's raw (un-normalised) features."""
    if cfg.kind == "mfcc":
        dct = torch.from_numpy(dct_matrix(cfg.n_mfcc, cfg.n_mels).copy())
        return torch.matmul(dct, logmel)
    return logmel


# ---------------------------------------------------------------------------------------------
# Disk cache


class ClipCache:
    """One ``.npy`` per clip under ``dir``, keyed by a hash of the clip file's bytes.

    Keying by content, not by path and modification time, keeps the cache valid when a corpus is
    copied, moved or re-mounted with new timestamps (hashing a clip costs milliseconds, its
    features seconds); an edited clip gets a new key.

    Writes are atomic (temporary file, then rename), so an interrupted job never leaves a torn
    entry; each entry carries a SHA-1 of its bytes, so one truncated or corrupted later (a full disk,
    a bad copy) is detected; a file that is missing, corrupt or of the wrong shape reads as a miss and
    is recomputed. ``hits`` and
    ``misses`` count lookups since construction. Subclasses say what they store (:meth:`_valid`,
    :meth:`_describe`).
    """

    info_name = "config.json"

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory).expanduser()
        self.hits = 0
        self.misses = 0
        self._keys: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> content key, per process

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.dir)!r})"

    def file_for(self, path) -> Path:
        """``path``: a clip (its own entry) or ``(clip, variant)``: a variant of the clip (a degraded copy: the
        variant names the degradation and its seed), keyed by the clip's bytes and the variant."""
        path, variant = path if isinstance(path, tuple) else (path, None)
        p = os.path.abspath(os.fspath(path))
        st = os.stat(p)
        stamp = (p, st.st_size, st.st_mtime_ns)
        key = self._keys.get(stamp)
        if key is None:
            key = self._keys[stamp] = content_key(p)
        if variant is not None:
            key = hashlib.sha1(f"{key}\0{variant}".encode()).hexdigest()
        return self.dir / key[:2] / f"{key}.npy"

    def _valid(self, arr: np.ndarray) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {}

    def get(self, path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray | None:
        try:
            f = self.file_for(path)
            if not checksum_ok(f):  # torn, truncated or corrupted on disk: a miss, recomputed and rewritten
                raise ValueError(f"{f}: checksum mismatch")
            arr = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            self.misses += 1
            return None
        if not self._valid(arr):
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, path: str | os.PathLike, arr: np.ndarray) -> Path:
        f = self.file_for(path)
        f.parent.mkdir(parents=True, exist_ok=True)
        info = self.dir / self.info_name
        if not info.exists():
            write_bytes(info, json.dumps(self._describe(), indent=2).encode())
        buf = io.BytesIO()
        np.save(buf, np.asarray(arr, dtype=np.float16), allow_pickle=False)
        write_bytes(f, with_checksum(buf.getvalue()))
        return f


class FeatureCache(ClipCache):
    """One float16 ``.npy`` of log-mel frames per clip, keyed by the clip's content, in a folder per config hash."""

    def __init__(self, root: str | os.PathLike, cfg: FeatureConfig):
        self.root = Path(root).expanduser()
        self.cfg = cfg
        super().__init__(self.root / config_hash(cfg))

    def _valid(self, arr: np.ndarray) -> bool:
        return arr.ndim == 2 and arr.shape[0] == self.cfg.n_mels

    def _describe(self) -> dict[str, Any]:
        return {"cache_version": CACHE_VERSION, "stored": "log-mel float16", "features": cached_config(self.cfg).to_dict()}


def content_key(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes (read in chunks), the cache key of a clip."""
    digest = hashlib.sha1(b"emovox-clip\0")
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


#: Cache entries end with this tag and the SHA-1 of every byte before it; ``np.load`` ignores bytes after the array.
CHECKSUM_TAG = b"EMVXSHA1"
_TRAILER_BYTES = len(CHECKSUM_TAG) + 20


def with_checksum(payload: bytes) -> bytes:
    return payload + CHECKSUM_TAG + hashlib.sha1(payload).digest()


def checksum_ok(path: Path, chunk_bytes: int = 1 << 20) -> bool:
    """True when ``path`` ends with a checksum trailer (:func:`with_checksum`) matching its contents."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size - _TRAILER_BYTES
        if size <= 0:
            return False
        digest, left = hashlib.sha1(), size
        while left > 0:
            block = fh.read(min(chunk_bytes, left))
            if not block:
                return False
            digest.update(block)
            left -= len(block)
        return fh.read(_TRAILER_BYTES) == CHECKSUM_TAG + digest.digest()


def resolve_cache(cache: FeatureCache | str | os.PathLike | bool | None, cfg: FeatureConfig) -> FeatureCache | None:
    """``FeatureCache`` (re-keyed for ``cfg``), a folder, ``True`` (default folder), or None/False (no cache)."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return FeatureCache(default_cache_dir(), cfg)
    if isinstance(cache, FeatureCache):
        return cache if config_hash(cache.cfg) == config_hash(cfg) else FeatureCache(cache.root, cfg)
    return FeatureCache(cache, cfg)


# ---------------------------------------------------------------------------------------------
# Loading features for many clips


@dataclass
class FeatureSet:
    """Log-mel frames for the clips that could be read, and what happened to the others."""

    features: list[np.ndarray]  # float16 (n_mels, frames), one per kept clip
    rows: list[Any]  # the kept rows (ManifestRow or path), in input order
    indices: list[int]  # positions of the kept rows in the input
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, why) for unreadable clips
    decoded: int = 0  # clips decoded and featurised (cache misses)

    def __len__(self) -> int:
        return len(self.features)


def cached_lookup(store: ClipCache | None, paths: Sequence[Any]) -> tuple[list[np.ndarray | None], list[int]]:
    """Each path's (or ``(path, variant)``'s) cached array (None on a miss or without a cache), and the positions
    still to compute."""
    results: list[np.ndarray | None] = [store.get(p) if store is not None else None for p in paths]
    return results, [i for i, r in enumerate(results) if r is None]


def row_path(row: Any) -> str:
    return os.fspath(row.path if hasattr(row, "path") else row)


def progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty()


def load_features(rows: Sequence[Any], cfg: FeatureConfig, *, cache: FeatureCache | str | os.PathLike | bool | None = None,
                  num_workers: int | None = None, progress: bool | None = None, desc: str = "features",
                  max_duration_s: float | None = MAX_TRAINING_CLIP_S, variant: Any = None) -> FeatureSet:
    """Log-mel frames (float16) for ``rows`` (ManifestRows or paths), from the cache or decoded.

    Cache misses are decoded and featurised by ``num_workers`` threads (default
    ``min(4, cpu_count)``; libsndfile, soxr and torch release the GIL) and stored. Clips that cannot
    be decoded (:class:`AudioError`) are left out and listed in ``errors``; the others keep
    their input order. ``variant``: a version of each clip instead of the clip itself (a degraded copy,
    :class:`emovox.degrade.multicondition.DegradedCopy`): ``variant.item(path)`` is its cache entry and
    ``variant.load(row, sample_rate_hz, max_duration_s)`` its waveform.
    """
    from tqdm.auto import tqdm

    store = resolve_cache(cache, cfg)
    paths = [row_path(r) for r in rows]
    items = paths if variant is None else [variant.item(p) for p in paths]
    results, todo = cached_lookup(store, items)
    errors: dict[int, str] = {}

    def work(i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            wave = load_audio(paths[i], sample_rate_hz=cfg.sample_rate_hz, max_duration_s=max_duration_s) \
                if variant is None else variant.load(rows[i], cfg.sample_rate_hz, max_duration_s)
        except (AudioError, OSError) as e:
            return i, None, str(e)
        lm = compute_logmel(wave, cfg)
        if store is not None:
            try:
                store.put(items[i], lm)
            except OSError:
                pass  # a read-only or full cache must not stop training
        return i, lm, None

    if todo:
        workers = max(1, num_workers if num_workers is not None else min(4, os.cpu_count() or 1))
        bar = tqdm(total=len(todo), desc=desc, unit="clip", disable=not progress_enabled(progress),
                   dynamic_ncols=True, leave=False)
        if workers == 1:
            outs = map(work, todo)
            for i, lm, err in outs:
                results[i] = lm
                if err:
                    errors[i] = err
                bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=workers) as ex:
                for i, lm, err in ex.map(work, todo):
                    results[i] = lm
                    if err:
                        errors[i] = err
                    bar.update(1)
        bar.close()
    keep = [i for i in range(len(paths)) if results[i] is not None]
    return FeatureSet(features=[results[i] for i in keep], rows=[rows[i] for i in keep], indices=keep,
                      errors=[(paths[i], errors[i]) for i in sorted(errors)], decoded=len(todo))


def fit_stats(features: Sequence[np.ndarray], cfg: FeatureConfig) -> FeatureStats:
    """Per-feature mean and std of the model's features over all frames of ``features`` (cached log-mel)."""
    return FeatureStats.fit(model_features(normalize_level(torch.from_numpy(f.astype(np.float32)), cfg), cfg)
                            for f in features)


# ---------------------------------------------------------------------------------------------
# Augmentation


@dataclass
class AugmentConfig:
    """Training-time augmentation (see the module docstring for what each one does)."""

    gain_db: float = 6.0  # uniform in [-gain_db, +gain_db]; 0: off
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (5.0, 30.0)
    speed_prob: float = 0.5
    speed_range: tuple[float, float] = (0.9, 1.1)
    freq_masks: int = 2
    freq_mask_max: float = 0.15  # of the bands, per mask
    time_masks: int = 2
    time_mask_max: float = 0.1  # of the frames, per mask

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        d = dict(d)
        for k in ("snr_db", "speed_range"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def _noise_shapes(c: FeatureConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected mel power of white and pink noise (each summing to 1) and Gamma shapes per band."""
    fb = mel_filterbank(c.sample_rate_hz, c.n_fft, c.n_mels, c.fmin_hz, c.fmax_hz).astype(np.float64)
    freqs = np.linspace(0, c.sample_rate_hz / 2, fb.shape[1])
    white = fb.sum(axis=1)
    pink = fb @ (1.0 / np.maximum(freqs, 50.0))
    dof = np.maximum(white**2 / np.maximum((fb**2).sum(axis=1), 1e-12), 1.0)
    return white / white.sum(), pink / pink.sum(), dof


def _mel_warp_index(c: FeatureConfig, rate: float) -> np.ndarray:
    """Fractional source band for each band when every frequency is multiplied by ``rate``."""
    fmax = c.sample_rate_hz / 2 if c.fmax_hz is None else c.fmax_hz
    mels = np.linspace(hz_to_mel(c.fmin_hz), hz_to_mel(fmax), c.n_mels + 2)[1:-1]
    src = hz_to_mel(mel_to_hz(mels) / rate)
    return np.clip((src - mels[0]) / (mels[1] - mels[0]), 0, c.n_mels - 1)


def _interp_rows(x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    lo = np.floor(idx).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[0] - 1)
    w = torch.from_numpy((idx - lo).astype(np.float32))[:, None]
    return x[lo] * (1 - w) + x[hi] * w


class BatchMaker:
    """Cached log-mel clips → model-ready batches ``(feats (B, F, T), lengths or None)``.

    Training batches: a random crop of ``crop_frames`` (None: the whole clip, at most
    ``max_frames``), augmentation when ``augment`` is given, model features, normalisation,
    SpecAugment. Evaluation batches: the whole clip (or the centre ``num_frames`` for fixed-input
    configs, padded with silence as the pipeline does), model features, normalisation.
    Batches are zero-padded (after normalisation) and carry ``lengths``; lengths is None when every
    clip has the same number of frames.
    """

    def __init__(self, cfg: FeatureConfig, stats: FeatureStats | Normalize | None, *, crop_frames: int | None = None,
                 max_frames: int | None = None, augment: AugmentConfig | None = None):
        """``stats``: the training statistics, or a loaded model's :class:`Normalize` (a model being evaluated)."""
        self.cfg = cfg
        self.cached = cached_config(cfg)
        self.crop_frames = cfg.num_frames or crop_frames
        self.max_frames = max_frames
        self.augment = augment
        if isinstance(stats, Normalize):
            self.normalize = Normalize(None, cfg.n_features)
            self.normalize.load_state_dict(stats.state_dict())
        else:
            self.normalize = Normalize(stats, cfg.n_features)
        self.floor_db = 10.0 * math.log10(cfg.log_floor)
        self._white, self._pink, self._dof = _noise_shapes(self.cached)
        self._silence_cfg = self.cached.replace(skip_zero_frames=False)  # padding: the log-mel of silence

    # -- evaluation
    def eval_item(self, logmel: np.ndarray) -> torch.Tensor:
        f = model_features(torch.from_numpy(logmel.astype(np.float32)), self.cfg)
        if self.cfg.num_frames is not None:
            f = fix_frames(f, self.cfg.num_frames, cfg=self.cfg)
        return prepare_input(f, self.cfg, self.normalize)

    def eval_batch(self, clips: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return collate([self.eval_item(c) for c in clips])

    # -- training
    def train_item(self, logmel: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        aug = self.augment
        x = torch.from_numpy(logmel.astype(np.float32))
        rate = 1.0
        if aug is not None and aug.speed_prob > 0 and rng.random() < aug.speed_prob:
            rate = float(rng.uniform(*aug.speed_range))
        target = self.crop_frames or self.max_frames
        t = x.shape[-1]
        if target is not None:
            window = max(1, round(target * rate))
            if t > window:
                start = int(rng.integers(0, t - window + 1))
                x = x[:, start : start + window]
        if rate != 1.0:
            new_t = max(1, round(x.shape[-1] / rate))
            if x.shape[-1] > 1:
                x = F.interpolate(x[None], size=new_t, mode="linear", align_corners=True)[0]
            x = _interp_rows(x, _mel_warp_index(self.cached, rate))
            if target is not None:
                x = x[:, :target]
        if aug is not None:
            x = self._gain_noise(x, rng)
        if self.cfg.num_frames is not None and x.shape[-1] < self.cfg.num_frames:
            pad = self.cfg.num_frames - x.shape[-1]
            left = int(rng.integers(0, pad + 1)) if aug is not None else pad // 2
            x = fix_frames(x, self.cfg.num_frames, offset=left, cfg=self._silence_cfg)  # padded with silence
        # level after gain and noise, as a quiet or noisy recording meets it at inference
        f = prepare_input(model_features(x, self.cfg), self.cfg, self.normalize)
        if aug is not None:
            f = self._spec_augment(f, rng)
        return f

    def train_batch(self, clips: Sequence[np.ndarray], rng: np.random.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return collate([self.train_item(c, rng) for c in clips])

    def _gain_noise(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        aug = self.augment
        if aug.gain_db > 0:
            x = x + float(rng.uniform(-aug.gain_db, aug.gain_db))
        if aug.noise_prob > 0 and self.cfg.power == 2.0 and rng.random() < aug.noise_prob:
            p = torch.pow(10.0, x / 10.0)
            signal = float(p.sum(dim=0).mean())
            snr = float(rng.uniform(*aug.snr_db))
            shape = self._white if rng.random() < 0.5 else self._pink
            fluct = rng.gamma(self._dof[:, None], 1.0 / self._dof[:, None], size=tuple(x.shape))
            noise = torch.from_numpy((signal / 10 ** (snr / 10) * shape[:, None] * fluct).astype(np.float32))
            x = 10.0 * torch.log10(p + noise)
        return torch.clamp(x, min=self.floor_db)

    def _spec_augment(self, f: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        aug = self.augment
        f = f.clone()
        n_f, n_t = f.shape
        if self.cfg.kind == "logmel":
            for _ in range(aug.freq_masks):
                w = int(rng.integers(0, max(1, int(aug.freq_mask_max * n_f)) + 1))
                if w:
                    s = int(rng.integers(0, n_f - w + 1))
                    f[s : s + w, :] = 0.0
        for _ in range(aug.time_masks):
            w = int(rng.integers(0, max(1, int(aug.time_mask_max * n_t)) + 1))
            if w and w < n_t:
                s = int(rng.integers(0, n_t - w + 1))
                f[:, s : s + w] = 0.0
        return f


def collate(items: Sequence[torch.Tensor], pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(F, T_i)`` tensors → ``(B, F, max T)`` padded with ``pad_value`` and lengths (None if all equal)."""
    lengths = torch.tensor([it.shape[-1] for it in items], dtype=torch.long)
    t = int(lengths.max())
    out = torch.full((len(items), items[0].shape[0], t), pad_value, dtype=items[0].dtype)
    for i, it in enumerate(items):
        out[i, :, : it.shape[-1]] = it
    return out, (None if bool((lengths == t).all()) else lengths)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

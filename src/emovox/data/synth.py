"""A small synthetic, learnable emotional-"speech" corpus for tests, demos and smoke training.

Each label has its own recipe (pitch level and contour, harmonic richness, loudness, syllable-rate
amplitude modulation, vibrato, breath noise), loosely following the acoustic correlates of
emotion in speech (angry: loud, bright, fast, rough; sad: quiet, low, dull, slow, falling...).
Every speaker perturbs the recipes (pitch, brightness, loudness, rate), every clip jitters them, so
a small CNN learns the labels in a few epochs but not from a single constant. Nothing here is real
speech: file names start with ``synthetic_`` and the folder gets a ``README.txt`` saying so.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emovox.data.labels import canonical

DEFAULT_LABELS = ("neutral", "happy", "sad", "angry")


@dataclass(frozen=True)
class Recipe:
    f0_hz: float  # mean pitch
    contour: str  # flat | rise | fall | rise_fall | fall_rise | end_rise
    contour_depth: float  # pitch excursion, fraction of f0
    tilt: float  # harmonic k has amplitude k**-tilt (small = bright/tense, large = dull/soft)
    gain: float  # peak level
    am_hz: float  # syllable rate
    am_depth: float  # 0..1
    noise: float  # breath/roughness noise relative to the voiced part's RMS
    vibrato_hz: float = 0.0
    vibrato_depth: float = 0.0  # fraction of f0


RECIPES: dict[str, Recipe] = {
    "neutral": Recipe(125, "flat", 0.05, 1.3, 0.35, 4.0, 0.5, 0.02),
    "calm": Recipe(115, "fall", 0.12, 1.8, 0.25, 2.5, 0.35, 0.01),
    "happy": Recipe(225, "rise_fall", 0.35, 0.8, 0.55, 6.0, 0.7, 0.02, 5.0, 0.03),
    "sad": Recipe(100, "fall", 0.25, 2.3, 0.16, 2.0, 0.6, 0.04),
    "angry": Recipe(175, "flat", 0.10, 0.4, 0.85, 8.0, 0.85, 0.10),
    "fearful": Recipe(260, "flat", 0.08, 1.0, 0.35, 7.0, 0.5, 0.06, 9.0, 0.07),
    "disgust": Recipe(110, "fall_rise", 0.30, 1.0, 0.40, 3.0, 0.7, 0.15),
    "surprised": Recipe(190, "end_rise", 0.80, 0.9, 0.60, 5.0, 0.6, 0.02),
    "boredom": Recipe(95, "flat", 0.02, 1.6, 0.22, 1.5, 0.3, 0.02),
}
_LABEL_IDS = {lab: i for i, lab in enumerate(RECIPES)}
_TABLE_SIZE = 4096


def _contour(kind: str, u: np.ndarray, depth: float) -> np.ndarray:
    """Relative pitch (multiplier around 1) over normalised time ``u`` in [0, 1]."""
    if kind == "flat":
        c = np.zeros_like(u)
    elif kind == "rise":
        c = u - 0.5
    elif kind == "fall":
        c = 0.5 - u
    elif kind == "rise_fall":
        c = 0.5 * np.sin(np.pi * u)
    elif kind == "fall_rise":
        c = -0.5 * np.sin(np.pi * u)
    elif kind == "end_rise":
        c = np.clip((u - 0.6) / 0.4, 0.0, 1.0) ** 2 * 0.8 - 0.1
    else:
        raise ValueError(f"unknown pitch contour {kind!r}")
    return 1.0 + depth * c


def _speaker_params(seed: int, speaker: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, speaker, 7919])
    return {
        "f0": float(np.exp(rng.uniform(-0.15, 0.15))),
        "tilt": float(rng.uniform(-0.2, 0.2)),
        "gain": float(np.exp(rng.uniform(-0.2, 0.2))),
        "rate": float(np.exp(rng.uniform(-0.1, 0.1))),
        "noise": float(np.exp(rng.uniform(-0.3, 0.3))),
    }


def synth_clip(label: str, *, speaker: int = 0, clip: int = 0, duration_s: float = 1.0,
               sample_rate_hz: int = 16000, seed: int = 0) -> np.ndarray:
    """One synthetic clip (float32 mono, peak below 1) of ``label`` for speaker number ``speaker``."""
    label = canonical(label)
    r = RECIPES[label]
    spk = _speaker_params(seed, speaker)
    rng = np.random.default_rng([seed, speaker, _LABEL_IDS[label], clip])
    n = max(1, int(round(duration_s * sample_rate_hz)))
    t = np.arange(n, dtype=np.float64) / sample_rate_hz
    u = t / max(t[-1], 1e-9)

    f0 = r.f0_hz * spk["f0"] * float(np.exp(rng.normal(0.0, 0.04)))
    f0_t = f0 * _contour(r.contour, u, r.contour_depth * float(np.exp(rng.normal(0.0, 0.1))))
    if r.vibrato_depth:
        f0_t = f0_t * (1.0 + r.vibrato_depth * np.sin(2 * np.pi * r.vibrato_hz * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(f0_t) / sample_rate_hz

    n_harm = int(max(1, min(30, 0.45 * sample_rate_hz // float(f0_t.max()))))
    k = np.arange(1, n_harm + 1, dtype=np.float64)
    amps = k ** -(r.tilt + spk["tilt"] + rng.normal(0.0, 0.05))
    # One period as a wavetable (harmonics limited by the highest pitch, so no aliasing), read at
    # the running phase: O(samples) instead of O(samples * harmonics).
    grid = np.arange(_TABLE_SIZE + 1) * (2 * np.pi / _TABLE_SIZE)
    table = (amps[:, None] * np.sin(k[:, None] * grid[None, :])).sum(axis=0)
    pos = (phase * (_TABLE_SIZE / (2 * np.pi))) % _TABLE_SIZE
    i0 = pos.astype(np.int64)
    frac = pos - i0
    voiced = table[i0] * (1.0 - frac) + table[i0 + 1] * frac

    am_hz = r.am_hz * spk["rate"] * float(np.exp(rng.normal(0.0, 0.05)))
    env = (1.0 - r.am_depth) + r.am_depth * (0.5 - 0.5 * np.cos(2 * np.pi * am_hz * t + rng.uniform(0, 2 * np.pi)))
    fade = min(n // 2, int(0.02 * sample_rate_hz))
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        env[:fade] *= ramp
        env[n - fade:] *= ramp[::-1]

    rms = float(np.sqrt(np.mean(voiced ** 2))) or 1.0
    noise = rng.standard_normal(n) * (r.noise * spk["noise"] * rms)
    x = (voiced + noise) * env
    peak = float(np.abs(x).max()) or 1.0
    gain = min(0.95, r.gain * spk["gain"] * float(np.exp(rng.normal(0.0, 0.08))))
    return (x * (gain / peak)).astype(np.float32)


def make_synthetic_corpus(
    out_dir: str | os.PathLike,
    *,
    labels: tuple[str, ...] | list[str] = DEFAULT_LABELS,
    n_speakers: int = 4,
    clips_per_label_per_speaker: int = 5,
    duration_s: float = 1.0,
    sample_rate_hz: int = 16000,
    seed: int = 0,
) -> Path:
    """Write a synthetic corpus (WAV files + ``labels.csv`` with ``path,label,speaker``) to ``out_dir``.

    Files are named ``synthetic_spk01_happy_003.wav``; speakers are ``spk01``... (``csv_spk01`` once
    read back by :func:`emovox.data.corpora.scan`). Returns ``out_dir``. Deterministic for a given seed.
    """
    import soundfile as sf

    labels = [canonical(lab) for lab in labels]
    if not labels:
        raise ValueError("labels must name at least one emotion")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels contain duplicates after normalisation: {labels}")
    if n_speakers < 1 or clips_per_label_per_speaker < 1:
        raise ValueError(f"n_speakers and clips_per_label_per_speaker must be at least 1, "
                         f"got {n_speakers} and {clips_per_label_per_speaker}")
    if not duration_s > 0 or sample_rate_hz <= 0:
        raise ValueError(f"duration_s and sample_rate_hz must be positive, got {duration_s} and {sample_rate_hz}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(clips_per_label_per_speaker)))
    spk_digits = max(2, len(str(n_speakers)))
    rows = []
    for s in range(n_speakers):
        spk = f"spk{s + 1:0{spk_digits}d}"
        for lab in labels:
            for c in range(clips_per_label_per_speaker):
                name = f"synthetic_{spk}_{lab}_{c + 1:0{digits}d}.wav"
                x = synth_clip(lab, speaker=s, clip=c, duration_s=duration_s, sample_rate_hz=sample_rate_hz, seed=seed)
                sf.write(out / name, x, sample_rate_hz, subtype="PCM_16")
                rows.append((name, lab, spk))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "speaker"])
        w.writerows(rows)
    total_s = len(rows) * duration_s
    (out / "README.txt").write_text(
        "SYNTHETIC data written by emovox.data.synth.make_synthetic_corpus: tones with emotion-like recipes\n"
        "(pitch, contour, brightness, loudness, syllable rate, noise), not human speech. For tests and\n"
        "demos only; accuracy on it says nothing about real emotion recognition.\n\n"
        f"labels: {', '.join(labels)}\nspeakers: {n_speakers}\nclips per label per speaker: "
        f"{clips_per_label_per_speaker}\nclips: {len(rows)} ({math.ceil(total_s)} s)\n"
        f"duration_s: {duration_s}\nsample_rate_hz: {sample_rate_hz}\nseed: {seed}\n",
        encoding="utf-8",
    )
    return out

"""The answer a model gives: :class:`Prediction` (label, score, every label's probability), :func:`softmax` with the calibrated temperature, and long-recording :class:`Timeline` s of windows merged into segments. NumPy only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emovox.data.labels import music_mood
from emovox.defaults import CONFIDENCE_THRESHOLD, POOR_INPUT_THRESHOLD_RAISE


@dataclass
class Prediction:
    """One clip's result: the top label, its probability, and every label's probability in order."""

    label: str
    score: float
    scores: dict[str, float]
    threshold: float = CONFIDENCE_THRESHOLD
    silent: bool = False
    #: requested labels (``labels=``) the model cannot express: their score is always 0
    unsupported_labels: tuple[str, ...] = ()
    #: the recording's measured quality (:func:`emovox.degrade.measure_quality`), when it was measured
    quality: Any = None

    @property
    def labels(self) -> list[str]:
        return list(self.scores)

    @property
    def music_mood(self) -> str:
        return music_mood(self.label)

    @property
    def effective_threshold(self) -> float:
        """The threshold for this recording: raised when its quality is poor (noise, low level, clipping,
        telephone band), where the models are less accurate than their confidence says."""
        if self.quality is not None and self.quality.poor:
            return min(self.threshold + POOR_INPUT_THRESHOLD_RAISE, 0.99)
        return self.threshold

    @property
    def low_confidence(self) -> bool:
        return self.score < self.effective_threshold

    @property
    def warning(self) -> str | None:
        """The FastAPI wav2vec2 hybrid's warning for predictions under the threshold (``None`` when confident),
        saying why the threshold was raised when the recording is poor."""
        if not self.low_confidence:
            return None
        why = ""
        if self.effective_threshold != self.threshold:
            why = f" for this recording ({'; '.join(self.quality.issues)})"
        return (f"low confidence: {self.label} at {self.score:.2f} is below the {self.effective_threshold:.2f} "
                f"threshold{why}; the emotion may be wrong")

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self, *, top_k: int | None = None) -> dict[str, Any]:
        """The one output schema (CLI JSON, HTTP): the Keras backend CNN's ``{"emotion", "confidence"}`` plus more."""
        scores = dict(self.top_k(top_k)) if top_k else dict(self.scores)
        return {
            "emotion": self.label,
            "confidence": round(self.score, 6),
            "scores": {k: round(v, 6) for k, v in scores.items()},
            "music_mood": self.music_mood,
            "low_confidence": self.low_confidence,
            **({"warning": self.warning} if self.low_confidence else {}),
            **({"silent": True} if self.silent else {}),
            **({"unsupported_labels": list(self.unsupported_labels)} if self.unsupported_labels else {}),
            **({"quality": self.quality.to_dict()} if self.quality is not None else {}),
        }


def retemper(probs: np.ndarray, factor: float) -> np.ndarray:
    """Probabilities at ``factor`` times their temperature: ``softmax(z / T)`` becomes ``softmax(z / (T * factor))``
    without the logits, since ``softmax(z / (T f)) ∝ softmax(z / T) ** (1 / f)``."""
    if factor == 1.0:
        return probs
    p = np.power(np.asarray(probs, dtype=np.float64), 1.0 / factor)
    return p / p.sum(axis=-1, keepdims=True)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)



@dataclass
class Segment:
    start_s: float
    end_s: float
    emotion: str | None  # None: no speech there (a timeline with speech_only=True)
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        if self.emotion is None:
            return {"start": round(self.start_s, 3), "end": round(self.end_s, 3), "speech": False}
        return {"start": round(self.start_s, 3), "end": round(self.end_s, 3), "emotion": self.emotion,
                "confidence": round(self.confidence, 6)}


def _window_dict(a: float, b: float, p: Prediction | None) -> dict[str, Any]:
    """A timeline window: its prediction, or ``"speech": false`` for a window without speech (not classified)."""
    return {"start": round(a, 3), "end": round(b, 3), **(p.to_dict() if p is not None else {"speech": False})}


@dataclass
class Timeline:
    """Per-window predictions of a long recording, and merged segments of the same emotion."""

    duration_s: float
    window_s: float
    hop_s: float
    windows: list[tuple[float, float, Prediction | None]] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration": round(self.duration_s, 3),
            "window_s": self.window_s,
            "hop_s": self.hop_s,
            "segments": [s.to_dict() for s in self.segments],
            "windows": [_window_dict(a, b, p) for a, b, p in self.windows],
        }

    def plot(self, path: str | os.PathLike) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = next((p.labels for _, _, p in self.windows if p is not None), [])
        centers = [(a + b) / 2 for a, b, _ in self.windows]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        for lab in labels:  # no speech: a gap in the line
            ax1.plot(centers, [p.scores[lab] if p is not None else np.nan for _, _, p in self.windows], label=lab,
                     lw=1.5)
        ax1.set_ylabel("probability")
        ax1.set_ylim(0, 1)
        ax1.legend(loc="upper right", fontsize=8, ncol=4)
        ax1.set_title("emotion over time")
        cmap = plt.get_cmap("tab10")
        for seg in self.segments:
            if seg.emotion is None:
                continue
            i = labels.index(seg.emotion) if seg.emotion in labels else 0
            ax2.axvspan(seg.start_s, seg.end_s, color=cmap(i % 10), alpha=0.8)
            ax2.text((seg.start_s + seg.end_s) / 2, 0.5, seg.emotion, ha="center", va="center", fontsize=8)
        ax2.set_yticks([])
        ax2.set_xlabel("time (s)")
        ax2.set_xlim(0, max(self.duration_s, 1e-3))
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out


def merge_segments(windows: Sequence[tuple[float, float, Prediction | None]], duration_s: float) -> list[Segment]:
    """Merge consecutive windows with the same top emotion (windows without speech, ``None``: emotion ``None``).

    Each window owns the span around its centre up to the midpoints with its neighbours, so
    segments tile ``[0, duration_s]`` without overlaps or gaps.
    """
    if not windows:
        return []
    centers = [(a + b) / 2 for a, b, _ in windows]
    bounds = [0.0] + [(centers[i] + centers[i + 1]) / 2 for i in range(len(centers) - 1)] + [duration_s]
    segments: list[Segment] = []
    confs: list[float] = []
    for i, (_, _, p) in enumerate(windows):
        label, score = (p.label, p.score) if p is not None else (None, 0.0)
        if segments and segments[-1].emotion == label:
            segments[-1].end_s = bounds[i + 1]
            confs.append(score)
            segments[-1].confidence = float(np.mean(confs))
        else:
            confs = [score]
            segments.append(Segment(bounds[i], bounds[i + 1], label, score))
    return segments

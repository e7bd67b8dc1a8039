"""Inference: one clip, many clips, long-recording timelines, and streaming.

>>> import emovox
>>> model = emovox.load_model()                # the shipped default model
>>> p = model.predict("clip.wav")              # path, bytes, file object, or (array, rate)
>>> p.label, p.score, p.scores                 # top emotion, its probability, every label's

Scores are calibrated probabilities (temperature scaling fitted on held-out validation data at
training time). ``labels=`` folds them into another label set (``"basic5"`` for seed 000's app,
``"app6"`` for seed 003's front-end, or a mapping), summing probability mass.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .audio import DEFAULT_MAX_DURATION_S, AudioError, is_silent, load_audio
from .defaults import CONFIDENCE_THRESHOLD, MAX_SERVED_CLIP_S
from .errors import ModelLoadError
from .labels import FOLD_FALLBACKS, LabelMap, music_mood

#: Top scores below this are flagged ``low_confidence`` (seed 002's 0.70).
DEFAULT_THRESHOLD = CONFIDENCE_THRESHOLD
DEFAULT_MODEL = "default"
#: A model folder's ONNX Runtime graphs (:mod:`emovox.export.runtime_build`).
RUNTIME_DIR = "onnx"
#: A streaming model's answer: after the last frame, or the mean of every frame's probabilities.
FINAL_ANSWERS = ("last", "mean")


@dataclass
class Prediction:
    """One clip's result: the top label, its probability, and every label's probability in order."""

    label: str
    score: float
    scores: dict[str, float]
    threshold: float = DEFAULT_THRESHOLD
    silent: bool = False
    #: requested labels (``labels=``) the model cannot express: their score is always 0
    unsupported_labels: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        return list(self.scores)

    @property
    def music_mood(self) -> str:
        return music_mood(self.label)

    @property
    def low_confidence(self) -> bool:
        return self.score < self.threshold

    @property
    def warning(self) -> str | None:
        """Seed 002's warning for predictions under the threshold (``None`` when confident)."""
        if not self.low_confidence:
            return None
        return (f"low confidence: {self.label} at {self.score:.2f} is below the {self.threshold:.2f} threshold; "
                "the emotion may be wrong")

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self, *, top_k: int | None = None) -> dict[str, Any]:
        """The one output schema (CLI JSON, HTTP): seed 001's ``{"emotion", "confidence"}`` plus more."""
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
        }


class Backend(Protocol):
    """What a model runtime provides: PyTorch (:class:`TorchBackend`) or onnxruntime."""

    labels: list[str]
    sample_rate_hz: int
    temperature: float

    def predict_logits(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray: ...


class TorchBackend:
    def __init__(self, loaded):
        import torch

        from .models.common import fuse_conv_bn

        self._torch = torch
        self.loaded = loaded
        self.pipeline = loaded.pipeline.eval()
        fuse_conv_bn(self.pipeline)  # same function, one pass less per block
        # 2-D convolutions and pools run ~3x faster on a CPU in NHWC (oneDNN's native layout); the
        # models that use them (crnn) hand their input over in that layout too. Same numbers.
        self.pipeline.to(memory_format=torch.channels_last)
        self.labels = list(self.pipeline.labels)
        self.sample_rate_hz = self.pipeline.sample_rate_hz
        self.temperature = float(self.pipeline.temperature)
        self.config = loaded.config
        self.streaming = bool(self.pipeline.streaming)

    def frame_stepper(self) -> TorchFrameStepper | None:
        """What a stream steps frame by frame (streaming models with frame-local features), else None."""
        pipe = self.pipeline
        return TorchFrameStepper(pipe) if pipe.streaming and not pipe.feature_config.center else None

    def predict_logits(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32))
            n = None if lengths is None else torch.from_numpy(np.asarray(lengths, dtype=np.int64))
            return self.pipeline(x, n).numpy()


class TorchFrameStepper:
    """One streaming step on PyTorch: the complete frames of some samples → logits after every frame."""

    def __init__(self, pipeline):
        cfg = pipeline.feature_config
        self.pipeline = pipeline
        self.hop_length, self.frame_span, self.peak_normalize = cfg.hop_length, cfg.frame_span, cfg.peak_normalize
        self.num_frames_for, self.samples_for = cfg.num_frames_for, cfg.samples_for

    def step(self, wave: np.ndarray, peak: float, state) -> tuple[np.ndarray, Any]:
        """``wave``: whole frames of samples; ``peak``: the stream's peak so far (``peak_normalize``
        features); ``state``: the previous step's (None to start) → ``(logits (frames, n_labels), state)``;
        frames skipped as all-zero (``skip_zero_frames``) give no row and leave the state as it was."""
        import torch

        from .modelio import streaming_step

        pipe = self.pipeline
        with torch.inference_mode():
            feats = pipe.stream_features(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None], peak)
            if feats.shape[-1] == 0:
                return np.zeros((0, len(pipe.labels)), np.float32), state
            logits, state = streaming_step(pipe, feats, state, every_frame=True)
        return logits[0].numpy(), state


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Timelines


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


# ---------------------------------------------------------------------------------------------
# The model


class EmotionModel:
    """A loaded speech emotion model (PyTorch or ONNX backend) with a clip-level API."""

    def __init__(self, backend: Backend, *, name: str = "", path: Path | None = None,
                 threshold: float = DEFAULT_THRESHOLD, max_duration_s: float | None = DEFAULT_MAX_DURATION_S):
        self.backend = backend
        self.name = name
        self.path = path
        self.threshold = threshold
        self.max_duration_s = max_duration_s
        self._maps: dict[Any, LabelMap] = {}

    # -- properties
    @property
    def labels(self) -> list[str]:
        return list(self.backend.labels)

    @property
    def sample_rate_hz(self) -> int:
        return self.backend.sample_rate_hz

    @property
    def config(self) -> dict[str, Any]:
        return getattr(self.backend, "config", {})

    @property
    def streaming(self) -> bool:
        """Whether the model runs frame by frame (a stream steps it with its state carried over)."""
        return bool(getattr(self.backend, "streaming", False))

    def output_labels(self, labels=None) -> list[str]:
        return list(self._label_map(labels).target) if labels is not None else self.labels

    def __repr__(self) -> str:
        return f"EmotionModel(name={self.name!r}, labels={self.labels})"

    # -- label folding
    def _label_map(self, labels) -> LabelMap:
        key = labels if isinstance(labels, (str, tuple)) or labels is None else repr(labels)
        if key not in self._maps:
            lm = LabelMap.build(self.labels, labels, fallbacks=FOLD_FALLBACKS)
            if not lm.lossless:
                lm.fold(np.zeros(len(self.labels)))  # raises LabelError naming the unmapped labels
            self._maps[key] = lm
        return self._maps[key]

    def unsupported_labels(self, labels=None) -> list[str]:
        """Labels of ``labels=`` that this model cannot express (e.g. ``calm`` in ``ravdess8`` for a model
        without it): their folded probability is always 0."""
        return list(self._label_map(labels).unreachable) if labels is not None else []

    def _to_prediction(self, probs: np.ndarray, labels=None, *, silent: bool = False) -> Prediction:
        unsupported: tuple[str, ...] = ()
        if labels is not None:
            lm = self._label_map(labels)
            probs, names, unsupported = lm.fold(probs), list(lm.target), lm.unreachable
        else:
            names = self.labels
        i = int(np.argmax(probs))
        return Prediction(label=names[i], score=float(probs[i]),
                          scores={n: float(p) for n, p in zip(names, probs)}, threshold=self.threshold,
                          silent=silent, unsupported_labels=unsupported)

    # -- audio
    def load(self, source, *, sample_rate_hz: int | None = None) -> np.ndarray:
        return load_audio(source, sample_rate_hz=self.sample_rate_hz, source_sample_rate_hz=sample_rate_hz,
                          max_duration_s=self.max_duration_s)

    def probabilities(self, waves: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
        """Calibrated probabilities ``(n, n_labels)`` for decoded clips; similar lengths are batched."""
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float64)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            lens = np.array([len(waves[i]) for i in idx])
            batch = np.zeros((len(idx), int(lens.max())), dtype=np.float32)
            for j, i in enumerate(idx):
                batch[j, : lens[j]] = waves[i]
            logits = self.backend.predict_logits(batch, None if (lens == lens[0]).all() else lens)
            out[idx] = softmax(logits, self.backend.temperature)
        return out

    def predict(self, source, *, sample_rate_hz: int | None = None, labels=None) -> Prediction:
        """Classify one clip: a path, bytes, a binary file object, or an array with ``sample_rate_hz``."""
        wave = self.load(source, sample_rate_hz=sample_rate_hz)
        probs = self.probabilities([wave])[0]
        return self._to_prediction(probs, labels, silent=is_silent(wave))

    def predict_batch(self, sources: Iterable, *, sample_rate_hz: int | None = None, labels=None,
                      batch_size: int = 16, num_workers: int | None = None, errors: str = "raise",
                      progress: bool = False) -> list[Prediction | AudioError]:
        """Classify many clips: decoded and featurised in parallel, run in mini-batches.

        ``errors="raise"`` stops at the first unreadable clip; ``errors="return"`` puts the
        :class:`~emovox.audio.AudioError` in that clip's place and goes on.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        sources = list(sources)
        self._label_map(labels) if labels is not None else None
        workers = num_workers or min(8, os.cpu_count() or 2)
        results: list[Prediction | AudioError | None] = [None] * len(sources)
        bar = None
        if progress and len(sources) > batch_size:
            from tqdm import tqdm

            bar = tqdm(total=len(sources), unit="clip", desc="classify")

        def _load(s):
            try:
                return self.load(s, sample_rate_hz=sample_rate_hz)
            except AudioError as e:
                if errors == "raise":
                    raise
                return e

        chunk = max(batch_size * 4, 64)
        starts = range(0, len(sources), chunk)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # the next chunk decodes while this one runs through the model (at most 2 chunks in memory)
            pending = [pool.submit(_load, s) for s in sources[:chunk]]
            for start in starts:
                waves = [f.result() for f in pending]
                nxt = start + chunk
                pending = [pool.submit(_load, s) for s in sources[nxt : nxt + chunk]]
                ok = [i for i, w in enumerate(waves) if not isinstance(w, AudioError)]
                probs = self.probabilities([waves[i] for i in ok], batch_size=batch_size) if ok else []
                for j, i in enumerate(ok):
                    results[start + i] = self._to_prediction(probs[j], labels, silent=is_silent(waves[i]))
                for i, w in enumerate(waves):
                    if isinstance(w, AudioError):
                        results[start + i] = w
                if bar is not None:
                    bar.update(len(waves))
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]

    def timeline(self, source, *, sample_rate_hz: int | None = None, window_s: float = 3.0, hop_s: float = 1.0,
                 labels=None, batch_size: int = 16, speech_only: bool = False) -> Timeline:
        """Sliding-window predictions over a long recording, merged into segments. ``speech_only``: windows
        without speech (Silero VAD, :mod:`emovox.segments`) are not classified: ``None`` in ``windows``,
        ``"speech": false`` in the output."""
        if window_s <= 0 or hop_s <= 0:
            raise ValueError(f"window_s and hop_s must be positive (got {window_s}, {hop_s})")
        wave = self.load(source, sample_rate_hz=sample_rate_hz)
        sr = self.sample_rate_hz
        duration = len(wave) / sr
        win, hop = int(round(window_s * sr)), int(round(hop_s * sr))
        starts = [0] if len(wave) <= win else list(range(0, len(wave) - win + 1, hop))
        if len(wave) > win and starts[-1] + win < len(wave):
            starts.append(len(wave) - win)  # cover the tail
        chunks = [wave[s : s + win] for s in starts]
        keep = [True] * len(chunks)
        if speech_only:
            from .segments.windows import speech_windows

            keep = speech_windows(wave, sr, starts, win)
        probs = iter(self.probabilities([c for c, k in zip(chunks, keep) if k], batch_size=batch_size))
        windows = [(s / sr, (s + len(c)) / sr, self._to_prediction(next(probs), labels, silent=is_silent(c)) if k
                    else None) for s, c, k in zip(starts, chunks, keep)]
        return Timeline(duration_s=duration, window_s=window_s, hop_s=hop_s, windows=windows,
                        segments=merge_segments(windows, duration))

    def segments(self, source, *, sample_rate_hz: int | None = None, labels=None, batch_size: int = 16,
                 max_duration_s: float | None = None, progress: bool = False, options=None, **option_values):
        """Speech segments of a recording of any length (voice activity detection, decoded in blocks), each
        classified as a whole → :class:`emovox.segments.SegmentedRecording` (no segments, and a ``message``,
        when there is no speech). ``options``: a :class:`emovox.segments.SegmentOptions`, or its fields as
        keywords (``min_speech_ms``, ``min_silence_ms``, ``speech_pad_ms``, ``max_segment_s``, ``threshold``)."""
        from .segments import SegmentOptions, classify_segments

        options = options if options is not None else SegmentOptions(**option_values)
        return classify_segments(self, source, sample_rate_hz=sample_rate_hz, labels=labels, batch_size=batch_size,
                                 options=options, max_duration_s=max_duration_s, progress=progress)

    def stream(self, *, labels=None, window_s: float = 3.0, max_buffer_s: float = MAX_SERVED_CLIP_S,
               final_answer: str = "last") -> StreamingSession:
        """An incremental session (:class:`StreamingSession`); ``final_answer`` ``"last"`` or
        ``"mean"`` (models that run frame by frame)."""
        return StreamingSession(self, labels=labels, window_s=window_s, max_buffer_s=max_buffer_s,
                                final_answer=final_answer)


# ---------------------------------------------------------------------------------------------
# Streaming


class StreamingSession:
    """Feed audio incrementally with :meth:`push`; get one update per chunk.

    - Streaming models (the LSTM on MFCC frames, ``center=False``): every complete frame is
      featurised as soon as its samples arrive and stepped through the model with its hidden state
      carried over, so every update equals classifying everything received so far. With
      ``peak_normalize`` features (``framewise-librosa-mfcc13``) frames are scaled by the peak of
      everything received so far; when a chunk raises that peak, the kept audio (``max_buffer_s``)
      is run again from the start, so updates still equal the offline answer.
    - Other models: the session keeps the audio (up to ``max_buffer_s``) and classifies the last
      ``window_s`` seconds on each push; :meth:`finish` classifies everything received.

    ``final_answer`` (streaming models): ``"last"`` reports the answer after the last frame,
    ``"mean"`` the mean of every frame's probabilities (seed 003's two options).

    Every non-empty chunk gets an update, all-zero ones included. Updates carry seed 003's
    ``{"class": int, "confidence": [...]}`` in the order of the output labels (``labels=`` folds
    them, e.g. ``app6``), the labelled result (``emotion``, ``score``, ``scores``, ...), and
    ``silent`` (as ``classify`` records) when the audio the answer is about is silent: everything
    received (streaming models) or the classified window.
    """

    def __init__(self, model: EmotionModel, *, labels=None, window_s: float = 3.0, max_buffer_s: float = MAX_SERVED_CLIP_S,
                 final_answer: str = "last"):
        if final_answer not in FINAL_ANSWERS:
            raise ValueError(f"final_answer must be one of {', '.join(FINAL_ANSWERS)}, got {final_answer!r}")
        self.model = model
        self.labels = labels
        self.window_s = window_s
        self.max_buffer_s = max_buffer_s
        self.final_answer = final_answer
        self.sample_rate_hz = model.sample_rate_hz
        if labels is not None:
            model._label_map(labels)  # an unknown or inexpressible label set fails here, not at the first chunk
        self.reset()
        if final_answer == "mean" and not self._frame_mode:
            raise ValueError(f"final_answer='mean' averages the answers of a model that runs frame by frame (an "
                             f"LSTM); model {model.name!r} classifies windows of audio: use final_answer='last'")

    def reset(self) -> None:
        self._buffer = np.zeros(0, dtype=np.float32)  # un-featurised tail (streaming) or all audio
        self._audio = np.zeros(0, dtype=np.float32)  # streaming with peak_normalize: the audio to run again
        self._received = 0
        self._peak = 0.0
        self._hidden = None
        self._frames = 0
        self._last_logits: np.ndarray | None = None
        self._prob_sum: np.ndarray | None = None
        make = getattr(self.model.backend, "frame_stepper", None)
        self._stepper = make() if make is not None else None
        self._frame_mode = self._stepper is not None

    @property
    def received_s(self) -> float:
        return self._received / self.sample_rate_hz

    def push(self, samples) -> list[dict[str, Any]]:
        """Add float samples in [-1, 1] at the model's rate; returns one update (none only for an
        empty chunk before any audio)."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(x).all():
            raise AudioError("streamed chunk contains NaN or infinite samples")
        if x.size == 0:
            return [self._current()] if self._received else []
        self._received += x.size
        if self._frame_mode:
            self._push_frames(x)
            return [self._current()]
        self._buffer = np.concatenate([self._buffer, x])
        limit = int(self.max_buffer_s * self.sample_rate_hz)
        if self._buffer.size > limit:
            self._buffer = self._buffer[-limit:]
        tail = self._buffer[-int(self.window_s * self.sample_rate_hz) :]
        return [self._update(self.model.probabilities([tail])[0], silent=is_silent(tail))]

    def _push_frames(self, x: np.ndarray) -> None:
        st = self._stepper
        peak = max(self._peak, float(np.abs(x).max()))
        rerun = st.peak_normalize and peak > self._peak and self._frames > 0
        self._peak = peak
        if st.peak_normalize:  # keep the audio, whole hops at a time, to run it again when the peak rises
            self._audio = np.concatenate([self._audio, x])
            excess = self._audio.size - int(self.max_buffer_s * self.sample_rate_hz)
            if excess > 0:
                self._audio = self._audio[-(-excess // st.hop_length) * st.hop_length :]
        if rerun:
            self._hidden, self._frames, self._last_logits, self._prob_sum = None, 0, None, None
            self._step(self._audio)
        else:
            self._step(np.concatenate([self._buffer, x]))

    def _step(self, buf: np.ndarray) -> None:
        """Step the complete frames of ``buf`` through the model (the backend's stepper); keep the rest."""
        st = self._stepper
        n_frames = st.num_frames_for(buf.size)
        self._buffer = buf[n_frames * st.hop_length :] if n_frames else buf
        if n_frames == 0:
            return
        logits, self._hidden = st.step(buf[: st.samples_for(n_frames)], self._peak, self._hidden)
        if len(logits) == 0:
            return
        if self.final_answer == "mean":
            probs = softmax(logits, self.model.backend.temperature)
            self._prob_sum = probs.sum(0) + (0.0 if self._prob_sum is None else self._prob_sum)
        self._frames += len(logits)
        self._last_logits = logits[-1]

    def _frame_probs(self) -> np.ndarray:
        """The answer for everything received (streaming models)."""
        if self._frames:
            if self.final_answer == "mean":
                return self._prob_sum / self._frames
            return softmax(self._last_logits, self.model.backend.temperature)
        # no non-zero frame yet: less than one frame (zero-padded to one), or only all-zero frames,
        # which the offline pipeline answers from the first of them
        span = self._stepper.frame_span
        head = self._buffer if self._received < span else np.zeros(span, dtype=np.float32)
        return self.model.probabilities([head])[0]

    def _current(self) -> dict[str, Any]:
        if self._frame_mode:
            return self._update(self._frame_probs(), silent=is_silent(np.array([self._peak], np.float32)))
        tail = self._buffer[-int(self.window_s * self.sample_rate_hz) :]
        return self._update(self.model.probabilities([tail])[0], silent=is_silent(tail))

    def _update(self, probs: np.ndarray, *, silent: bool) -> dict[str, Any]:
        pred = self.model._to_prediction(probs, self.labels, silent=silent)
        labelled = pred.to_dict()
        # Seed 003's shape: "class" (the index of the top label) and "confidence" (every label's
        # probability), both in the order of the output labels (folded when labels= is given); the
        # labelled result has its top score as "score".
        labelled["score"] = labelled.pop("confidence")
        return {
            "time_s": round(self.received_s, 3),
            "frames": self._frames,
            "class": list(pred.scores).index(pred.label),
            "confidence": [round(float(p), 6) for p in pred.scores.values()],
            **labelled,
        }

    def finish(self) -> dict[str, Any] | None:
        """The final result for everything pushed (equal to classifying the whole clip); None when
        nothing was pushed."""
        if not self._received:
            return None
        if self._frame_mode:
            return self._current()
        return self._update(self.model.probabilities([self._buffer])[0], silent=is_silent(self._buffer))


# ---------------------------------------------------------------------------------------------
# Loading


def _assets_root():
    return resources.files("emovox") / "assets" / "models"


def available_models() -> list[dict[str, Any]]:
    """The models shipped inside the package: name, labels, description."""
    import json

    out = []
    root = _assets_root()
    if not root.is_dir():
        return out
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        cfg = entry / "model_config.json"
        if entry.is_dir() and cfg.is_file():
            c = json.loads(cfg.read_text())
            out.append({"name": entry.name, "labels": c.get("labels", []), "model": c.get("model", {}).get("name"),
                        "features": c.get("features", {}).get("kind"),
                        "description": c.get("description", "")})
    return out


def resolve_model_path(name_or_path: str | os.PathLike | None) -> tuple[str, Path]:
    """A shipped model's name (``None`` = default) or a path → (name, folder)."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    p = Path(name_or_path)
    if p.exists():
        return p.name, p
    shipped = _assets_root() / str(name_or_path)
    if shipped.is_dir():
        with resources.as_file(shipped) as folder:
            return str(name_or_path), Path(folder)
    names = [m["name"] for m in available_models()]
    raise ModelLoadError(
        f"model {str(name_or_path)!r} is neither a folder nor a shipped model; shipped models: "
        f"{', '.join(names) or '(none)'}"
    )


BACKENDS = ("auto", "onnx", "torch")


def load_model(name_or_path: str | os.PathLike | None = None, *, backend: str = "auto",
               threshold: float = DEFAULT_THRESHOLD, max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
               allow_pickle: bool = False, threads: int | None = None) -> EmotionModel:
    """Load the default shipped model (``None``), a shipped model by name, a trained model folder, an
    ``emovox export`` folder, or a Hugging Face audio-classification folder (:mod:`emovox.hf_audio`).

    ``backend``: ``"auto"`` runs the model's ONNX Runtime graphs (``<model>/onnx/``: the shipped models have
    them) when onnxruntime is installed, without importing PyTorch, and PyTorch otherwise; ``"onnx"`` insists
    on ONNX Runtime (a model folder with ``onnx/``, or an ``emovox export`` folder or ``.onnx`` file);
    ``"torch"`` runs the PyTorch model (training installs; the reference for parity checks).
    ``threads``: ONNX Runtime's threads (default: the cores this process may use).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    common = {"threshold": threshold, "max_duration_s": max_duration_s}
    if backend == "onnx" and name_or_path is not None and not _is_shipped(name_or_path):
        p = Path(name_or_path)
        if not p.exists():
            raise FileNotFoundError(f"--backend onnx needs a model folder, an exported ONNX folder or a .onnx file, "
                                    f"got {name_or_path!r}")
        if not (p / RUNTIME_DIR).is_dir():
            from .onnx_backend import OnnxModel

            return EmotionModel(OnnxModel(p, threads=threads), name=p.name, path=p, **common)
    name, folder = resolve_model_path(name_or_path)
    if backend != "torch" and (folder / RUNTIME_DIR / "runtime.json").is_file() and _has_onnxruntime():
        from .onnx_backend import OnnxModel

        return EmotionModel(OnnxModel(folder / RUNTIME_DIR, threads=threads), name=name, path=folder, **common)
    if backend == "onnx":
        raise ModelLoadError(f"{folder}: no ONNX Runtime graphs here ({RUNTIME_DIR}/runtime.json) or onnxruntime is "
                             "not installed; build them with `python -m tools.ship_model` or run backend='torch'")
    return _load_torch(name, folder, allow_pickle=allow_pickle, **common)


def _is_shipped(name_or_path) -> bool:
    return not Path(name_or_path).exists() and (_assets_root() / str(name_or_path)).is_dir()


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _load_torch(name: str, folder: Path, *, allow_pickle: bool, **common) -> EmotionModel:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise ModelLoadError(f"{folder}: this model runs on PyTorch (it has no {RUNTIME_DIR}/ graphs for ONNX "
                             "Runtime), which is not installed: pip install 'emovox[train]'")
    from .hf_audio import HFAudioBackend, is_hf_audio_folder
    from .modelio import load_model_dir

    if is_hf_audio_folder(folder):  # a Hugging Face audio-classification checkpoint (save_pretrained)
        return EmotionModel(HFAudioBackend(folder), name=name, path=folder, **common)
    loaded = load_model_dir(folder, allow_pickle=allow_pickle)
    return EmotionModel(TorchBackend(loaded), name=name, path=folder, **common)


__all__ = ["EmotionModel", "Prediction", "Segment", "StreamingSession", "Timeline", "available_models",
           "load_model", "merge_segments", "softmax"]

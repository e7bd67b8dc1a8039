"""Streaming: :class:`StreamingSession` feeds audio incrementally and answers per chunk, on any backend's frame stepper (ONNX Runtime or PyTorch). NumPy only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from emovox.audio import AudioError, is_silent
from emovox.defaults import MAX_SERVED_CLIP_S
from emovox.runtime.answers import softmax

#: A streaming model's answer: after the last frame, or the mean of every frame's probabilities.
FINAL_ANSWERS = ("last", "mean")

if TYPE_CHECKING:
    from emovox.inference import EmotionModel



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
    ``"mean"`` the mean of every frame's probabilities (the streaming MFCC-LSTM's two options).

    Every non-empty chunk gets an update, all-zero ones included. Updates carry the streaming MFCC-LSTM's
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
        return [self._update(self.model.probabilities([tail])[0], silent=is_silent(tail), window=tail.size)]

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
        return self._update(self.model.probabilities([tail])[0], silent=is_silent(tail), window=tail.size)

    def _update(self, probs: np.ndarray, *, silent: bool, window: int | None = None) -> dict[str, Any]:
        """``window``: windowed models, the samples classified (reported as ``window_s`` instead of ``frames``)."""
        pred = self.model._to_prediction(probs, self.labels, silent=silent)
        labelled = pred.to_dict()
        # The streaming MFCC-LSTM's shape: "class" (the index of the top label) and "confidence" (every label's
        # probability), both in the order of the output labels (folded when labels= is given); the
        # labelled result has its top score as "score".
        labelled["score"] = labelled.pop("confidence")
        return {
            "time_s": round(self.received_s, 3),
            **({"frames": self._frames} if window is None else
               {"window_s": round(window / self.sample_rate_hz, 3)}),
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
        return self._update(self.model.probabilities([self._buffer])[0], silent=is_silent(self._buffer),
                            window=self._buffer.size)

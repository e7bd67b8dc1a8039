"""Speech probabilities (one per 512-sample frame) → speech segments, as they happen.

The rules are Silero's ``get_speech_timestamps`` (its default, ``use_max_poss_sil_at_max_speech``): a
segment starts at the first frame at or above ``threshold`` and ends where the probability falls below
``neg_threshold`` for ``min_silence_ms``; segments shorter than ``min_speech_ms`` are dropped; a segment
reaching ``max_segment_s`` is split at its longest pause (of more than 98 ms; at that frame when it has none),
so a long turn is cut between words where it can be; finally each segment is padded by ``speech_pad_ms``
(or half the gap to its neighbour when the gap is shorter than two pads).

Everything is incremental (:class:`Endpointer` then :class:`Padder`): a live stream gets the same segments
as the whole recording (:func:`speech_segments`), each as soon as it cannot change any more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emovox.segments.vad import FRAME, VAD_RATE_HZ

#: A pause shorter than this (ms) is never where a long segment is split (Silero's min_silence_at_max_speech).
MIN_SPLIT_PAUSE_MS = 98


@dataclass(frozen=True)
class SegmentOptions:
    """How speech becomes segments. Silero's defaults are threshold 0.5, 100 ms of silence and 30 ms of padding;
    these (a lower threshold: quiet speech counts; 300 ms: a pause inside a sentence does not end it) found more
    utterances on recordings of the default model's *training* speakers, clean and in pink noise
    (``python -m benchmarks.segments_tune``: precision / recall 0.947 / 0.895 against 0.886 / 0.874; 100 ms of
    padding scored 0.957 / 0.904 but ends segments further past the speech). Segments are capped at 30 s, the
    default model's context."""

    threshold: float = 0.35
    min_speech_ms: float = 250.0
    min_silence_ms: float = 300.0
    speech_pad_ms: float = 30.0
    max_segment_s: float | None = 30.0
    neg_threshold: float | None = None
    #: audio classified with each segment on both sides, never past a neighbouring segment (the boundaries
    #: reported stay as found): the default model was trained on clips with their silences. On the training
    #: speakers' recording of ``benchmarks.segments_tune context``, UAR 81.6 with none, 83.6 with 0.25 s, 87.4
    #: with 0.5 s, 76.5 with 1 s (which reaches into the neighbours' speech)
    context_ms: float = 500.0

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold (where a pause starts) must be above 0 and at most threshold "
                             f"({self.threshold}), got {self.neg_threshold}")
        for name in ("min_speech_ms", "min_silence_ms", "speech_pad_ms", "context_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number of milliseconds, got {value}")
        if self.max_segment_s is not None and not self.max_segment_s > (FRAME + 2 * self.pad_samples) / VAD_RATE_HZ:
            raise ValueError(f"max_segment_s must be longer than two pads and a frame "
                             f"({(FRAME + 2 * self.pad_samples) / VAD_RATE_HZ:.3f} s), got {self.max_segment_s}")

    @property
    def pad_samples(self) -> float:
        return VAD_RATE_HZ * self.speech_pad_ms / 1000

    @property
    def exit_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


class Endpointer:
    """Frame probabilities → raw segments ``(start, end)`` in samples, before padding; one call per frame."""

    def __init__(self, options: SegmentOptions = SegmentOptions()):
        o, sr = options, VAD_RATE_HZ
        self.options = o
        self.min_speech = sr * o.min_speech_ms / 1000
        self.min_silence = sr * o.min_silence_ms / 1000
        self.min_split_pause = sr * MIN_SPLIT_PAUSE_MS / 1000
        cap = math.inf if o.max_segment_s is None else sr * o.max_segment_s
        self.max_speech = cap - FRAME - 2 * o.pad_samples
        self.frame = 0
        self._close()

    def _close(self) -> None:
        self.start: int | None = None  # the open segment's start (None: not in speech)
        self.temp_end = 0  # where the current pause began (0: none)
        self.prev_end = self.next_start = 0
        self.pauses: list[tuple[int, int]] = []  # (start, length) of the open segment's pauses

    @property
    def triggered(self) -> bool:
        return self.start is not None

    def push(self, prob: float) -> list[tuple[int, int]]:
        """The segments this frame closes (at most one)."""
        o, cur = self.options, FRAME * self.frame
        self.frame += 1
        if prob >= o.threshold and self.temp_end:
            if cur - self.temp_end > self.min_split_pause:
                self.pauses.append((self.temp_end, cur - self.temp_end))
            self.temp_end = 0
            if self.next_start < self.prev_end:
                self.next_start = cur
        if prob >= o.threshold and not self.triggered:
            self.start = cur
            return []
        out: list[tuple[int, int]] = []
        if self.triggered and cur - self.start > self.max_speech:
            segment, here = self._split(cur)
            out.append(segment)
            if here:
                return out  # cut at this frame: nothing more to do with it
        if prob < o.exit_threshold and self.triggered:
            out += self._pause(cur)
        return out

    def _split(self, cur: int) -> tuple[tuple[int, int], bool]:
        """A segment at its length limit, cut at its longest pause (the next one starts where speech resumed),
        or at this frame when it has none → (segment, whether it was cut at this frame)."""
        start = self.start
        if self.pauses:
            end, length = max(self.pauses, key=lambda p: p[1])
            self._close()
            nxt = end + length
            if nxt < end + cur:  # Silero's test (always true: the pause ended before this frame)
                self.start = nxt
            return (start, end), False
        self._close()
        return (start, cur), True

    def _pause(self, cur: int) -> list[tuple[int, int]]:
        if not self.temp_end:
            self.temp_end = cur
        if cur - self.temp_end < self.min_silence:
            return []
        start, end = self.start, self.temp_end
        self._close()
        return [(start, end)] if end - start > self.min_speech else []

    def finish(self, n_samples: int) -> list[tuple[int, int]]:
        """The segment still open when the audio ends (``n_samples`` long), if long enough."""
        start = self.start
        self._close()
        return [(start, n_samples)] if start is not None and n_samples - start > self.min_speech else []


class Padder:
    """Raw segments → padded segments ``(start, end)`` in samples, each released once no later segment can
    change it (its end depends on the gap to the next one)."""

    def __init__(self, options: SegmentOptions = SegmentOptions()):
        self.pad = options.pad_samples
        self.pending: tuple[int, int] | None = None  # padded start, raw end

    def push(self, raw: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out = []
        for start, end in raw:
            if self.pending is None:
                self.pending = (int(max(0, start - self.pad)), end)
                continue
            p_start, p_end = self.pending
            gap = start - p_end
            shift = gap // 2 if gap < 2 * self.pad else self.pad
            out.append((p_start, int(p_end + shift)))
            self.pending = (int(max(0, start - shift)), end)
        return out

    def release(self, earliest_next_start: int) -> list[tuple[int, int]]:
        """The pending segment, when no segment can start before ``earliest_next_start`` close enough to it."""
        if self.pending is None or earliest_next_start - self.pending[1] < 2 * self.pad:
            return []
        p_start, p_end = self.pending
        self.pending = None
        return [(p_start, int(p_end + self.pad))]

    def finish(self, n_samples: int) -> list[tuple[int, int]]:
        if self.pending is None:
            return []
        p_start, p_end = self.pending
        self.pending = None
        return [(p_start, int(min(n_samples, p_end + self.pad)))]


class Segmenter:
    """Probabilities in, final padded segments (samples at 16 kHz) out, as early as they are certain."""

    def __init__(self, options: SegmentOptions = SegmentOptions()):
        self.endpointer = Endpointer(options)
        self.padder = Padder(options)

    def push(self, probs) -> list[tuple[int, int]]:
        out = []
        ep = self.endpointer
        for p in np.asarray(probs, dtype=np.float64).reshape(-1):
            out += self.padder.push(ep.push(float(p)))
        here = FRAME * ep.frame
        out += self.padder.release(min(here, ep.start) if ep.triggered else here)
        return out

    def finish(self, n_samples: int) -> list[tuple[int, int]]:
        return self.padder.push(self.endpointer.finish(n_samples)) + self.padder.finish(n_samples)


def speech_segments(probs, n_samples: int, options: SegmentOptions = SegmentOptions()) -> list[tuple[int, int]]:
    """All segments ``(start, end)`` in samples of a recording of ``n_samples`` with these frame probabilities."""
    seg = Segmenter(options)
    return seg.push(probs) + seg.finish(n_samples)


def context_windows(spans: list[tuple[int, int]], n_samples: int, context: int) -> list[tuple[int, int]]:
    """Each segment widened by ``context`` samples on both sides, never into its neighbours nor past the
    recording (``n_samples``): what is classified for it."""
    out = []
    for i, (a, b) in enumerate(spans):
        lo = spans[i - 1][1] if i else 0
        hi = spans[i + 1][0] if i + 1 < len(spans) else n_samples
        out.append((max(a - context, lo), min(b + context, hi)))
    return out

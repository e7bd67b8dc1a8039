"""A recording → its speech segments, each classified as a whole (``model.segments(path)``).

Two passes over the recording, each decoded in blocks (:mod:`.decode`), so memory follows the longest
segment, not the recording: the first runs the VAD (:mod:`.vad`) and the segmenter (:mod:`.segmenter`) and
keeps a coarse envelope for the plot; the second cuts the segments out and classifies them in batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emovox.segments.decode import Recording, open_recording
from emovox.segments.segmenter import Segmenter, SegmentOptions, context_windows
from emovox.segments.vad import VAD_RATE_HZ, SileroVad

#: Samples per envelope point (0.1 s at 16 kHz): what the plot draws of the waveform.
ENVELOPE_HOP = 1600
#: Segments cut and classified together (their audio is what the second pass holds).
SEGMENTS_PER_BATCH = 32


@dataclass
class SpeechSegment:
    """One stretch of speech (seconds from the recording's start) and its prediction."""

    start_s: float
    end_s: float
    prediction: Any  # emovox.inference.Prediction

    def to_dict(self, *, top_k: int | None = None) -> dict[str, Any]:
        return {"start": round(self.start_s, 3), "end": round(self.end_s, 3), **self.prediction.to_dict(top_k=top_k)}


@dataclass
class SegmentedRecording:
    """A recording's speech segments; ``message`` says when there are none."""

    source: str
    duration_s: float
    segments: list[SpeechSegment] = field(default_factory=list)
    options: SegmentOptions = field(default_factory=SegmentOptions)
    envelope: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    envelope_hop_s: float = ENVELOPE_HOP / VAD_RATE_HZ

    @property
    def speech_s(self) -> float:
        return sum(s.end_s - s.start_s for s in self.segments)

    @property
    def message(self) -> str | None:
        if self.segments:
            return None
        return f"{self.source}: no speech found in {self.duration_s:.1f} s (no segments)"

    def records(self, path: str, *, top_k: int | None = None) -> list[dict[str, Any]]:
        """One record per segment: ``path``, ``segment`` (its index), ``start``, ``end``, the prediction."""
        return [{"path": path, "segment": i, **s.to_dict(top_k=top_k)} for i, s in enumerate(self.segments)]

    def to_dict(self, *, top_k: int | None = None) -> dict[str, Any]:
        return {"duration": round(self.duration_s, 3), "speech": round(self.speech_s, 3),
                "segments": [s.to_dict(top_k=top_k) for s in self.segments]}

    def plot(self, path: str | os.PathLike) -> Path:
        from emovox.segments.plot import plot_segments

        return plot_segments(self, path)


def find_speech(rec: Recording, options: SegmentOptions,
                progress=None) -> tuple[list[tuple[int, int]], np.ndarray, int]:
    """The first pass: speech segments ``(start, end)`` in samples at 16 kHz, the envelope (one peak per
    :data:`ENVELOPE_HOP` samples), and the number of samples."""
    vad, seg = SileroVad(), Segmenter(options)
    spans: list[tuple[int, int]] = []
    peaks: list[np.ndarray] = []
    carry = np.zeros(0, np.float32)
    n = 0
    for block in rec.blocks():
        spans += seg.push(vad.push(block))
        n += block.size
        carry = np.concatenate([carry, np.abs(block)])
        whole = carry.size // ENVELOPE_HOP * ENVELOPE_HOP
        peaks.append(carry[:whole].reshape(-1, ENVELOPE_HOP).max(axis=1))
        carry = carry[whole:]
        if progress is not None:
            progress.update(block.size / VAD_RATE_HZ)
    spans += seg.push(vad.finish()) + seg.finish(n)
    if carry.size:
        peaks.append(carry.max(keepdims=True))
    return spans, np.concatenate(peaks) if peaks else np.zeros(0, np.float32), n


def cut_spans(rec: Recording, spans: list[tuple[int, int]]) -> Iterator[np.ndarray]:
    """The second pass: each span's samples, in order (spans sorted by start and by end)."""
    if not spans:
        return
    buf, offset, i = np.zeros(0, np.float32), 0, 0
    for block in rec.blocks():
        buf = np.concatenate([buf, block])
        while i < len(spans) and spans[i][1] <= offset + buf.size:
            a, b = spans[i]
            yield buf[a - offset:b - offset].copy()
            i += 1
        if i == len(spans):
            return
        keep_from = spans[i][0]
        if keep_from > offset:  # drop what no span still needs
            drop = min(keep_from - offset, buf.size)
            buf, offset = buf[drop:], offset + drop
    while i < len(spans):  # a span ending past the last sample (rounding): what there is
        a, b = spans[i]
        yield buf[a - offset:b - offset].copy()
        i += 1


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def classify_segments(model, source, *, sample_rate_hz: int | None = None, labels=None, batch_size: int = 16,
                      options: SegmentOptions | None = None, max_duration_s: float | None = None,
                      progress: bool = False) -> SegmentedRecording:
    """Find the speech in ``source`` (a path, bytes, a binary file object, or an array with
    ``sample_rate_hz``) and classify each segment with ``model``."""
    options = options or SegmentOptions()
    if labels is not None:
        model.output_labels(labels)  # an unknown label set fails before the recording is read
    rec = open_recording(source, sample_rate_hz=VAD_RATE_HZ, source_sample_rate_hz=sample_rate_hz,
                         max_duration_s=max_duration_s)
    bar = _bar(progress, rec.duration_s, "finding speech", "s")
    try:
        spans, envelope, n = find_speech(rec, options, bar)
    finally:
        if bar is not None:
            bar.close()
    out = SegmentedRecording(rec.desc, rec.duration_s, options=options, envelope=envelope)
    bar = _bar(progress and bool(spans), len(spans), "classifying segments", "seg")
    windows = context_windows(spans, n, int(options.context_ms * VAD_RATE_HZ / 1000))
    waves = (to_model_rate(w, model.sample_rate_hz) for w in cut_spans(rec, windows))
    done = 0
    for batch in _batches(waves, SEGMENTS_PER_BATCH):
        probs = model.probabilities(batch, batch_size=batch_size)
        for w, p in zip(batch, probs):
            a, b = spans[done]
            out.segments.append(SpeechSegment(a / VAD_RATE_HZ, b / VAD_RATE_HZ,
                                              model._answer(p, w, labels)))
            done += 1
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return out


def to_model_rate(wave: np.ndarray, rate: int) -> np.ndarray:
    if rate == VAD_RATE_HZ:
        return wave
    import soxr

    return soxr.resample(wave, VAD_RATE_HZ, rate, quality="HQ").astype(np.float32, copy=False)


def _bar(on: bool, total: float, desc: str, unit: str):
    if not on:
        return None
    from tqdm import tqdm

    return tqdm(total=round(total, 1), desc=desc, unit=unit, leave=False, dynamic_ncols=True)

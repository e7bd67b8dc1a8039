"""Which fixed windows of a timeline hold speech (``emovox classify --timeline``: the others are marked, not
classified)."""

from __future__ import annotations

import numpy as np

from emovox.segments.segmenter import SegmentOptions, speech_segments
from emovox.segments.vad import VAD_RATE_HZ, SileroVad

#: A window holds speech when at least this much of it (seconds) is inside a speech segment.
MIN_WINDOW_SPEECH_S = 0.25


def speech_spans(wave: np.ndarray, sample_rate_hz: int, options: SegmentOptions | None = None) -> list[tuple[int, int]]:
    """The speech segments of a decoded clip, in samples at ``sample_rate_hz``."""
    x = np.asarray(wave, dtype=np.float32)
    if sample_rate_hz != VAD_RATE_HZ:
        import soxr

        x = soxr.resample(x, sample_rate_hz, VAD_RATE_HZ, quality="HQ").astype(np.float32, copy=False)
    spans = speech_segments(SileroVad().probabilities(x), x.size, options or SegmentOptions())
    scale = sample_rate_hz / VAD_RATE_HZ
    return [(int(a * scale), int(b * scale)) for a, b in spans]


def speech_windows(wave: np.ndarray, sample_rate_hz: int, starts: list[int], length: int,
                   options: SegmentOptions | None = None) -> list[bool]:
    """For each window ``[start, start + length)``: whether it holds speech."""
    spans = speech_spans(wave, sample_rate_hz, options)
    need = min(length, MIN_WINDOW_SPEECH_S * sample_rate_hz)
    out = []
    for s in starts:
        e = min(s + length, len(wave))
        overlap = sum(max(0, min(b, e) - max(a, s)) for a, b in spans)
        out.append(overlap >= min(need, e - s))
    return out

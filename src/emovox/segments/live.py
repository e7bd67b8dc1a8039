"""Endpointing on live audio: speech start and end as they happen, and each utterance's emotion when it ends.

>>> live = LiveSegments(model)
>>> for chunk in chunks:                 # float samples at the model's rate
...     for event in live.push(chunk):   # {"event": "speech_start", ...} / {"event": "speech_end", ...}
...         print(event)
>>> live.finish()                        # the utterance still open when the stream ends

The VAD and the segmenter are the offline ones (:func:`emovox.segments.classify_segments`), fed as the audio
comes, so the utterances (``speech_end`` events) are the offline segments, with the same emotions. An
utterance is reported once it cannot change: after ``min_silence_ms`` of pause and two pads of audio past its
end. ``speech_start`` is reported once the speech is sure to make an utterance (longer than ``min_speech_ms``;
its ``start`` includes the padding, and the ``speech_end`` event gives the final one, which may be later when
the pause before was shorter than two pads).
Memory: the audio of the open utterance only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emovox.segments.pipeline import to_model_rate
from emovox.segments.segmenter import Segmenter, SegmentOptions
from emovox.segments.vad import FRAME, VAD_RATE_HZ, SileroVad


class LiveSegments:
    """Speech events of one live stream for ``model`` (an :class:`emovox.inference.EmotionModel`)."""

    def __init__(self, model, *, labels=None, options: SegmentOptions | None = None):
        self.model, self.labels = model, labels
        self.options = options or SegmentOptions()
        if labels is not None:
            model.output_labels(labels)
        self.resampler = None
        if model.sample_rate_hz != VAD_RATE_HZ:
            import soxr

            self.resampler = soxr.ResampleStream(model.sample_rate_hz, VAD_RATE_HZ, 1, dtype="float32", quality="HQ")
        self.reset()

    def reset(self) -> None:
        self.vad, self.segmenter = SileroVad(), Segmenter(self.options)
        self._buf = np.zeros(0, np.float32)  # 16 kHz audio from sample self._offset on
        self._offset = 0
        self._announced: int | None = None  # the open segment's start already reported
        self._held: list[tuple[int, int, int]] = []  # final segments waiting for their context: (lo, start, end)
        self._last_end = 0  # the end of the last final segment (the next one's context stops there)
        self.context = int(self.options.context_ms * VAD_RATE_HZ / 1000)

    @property
    def received(self) -> int:
        return self._offset + self._buf.size

    def push(self, samples) -> list[dict[str, Any]]:
        """Events for these samples (float, at the model's rate), in order."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x)
        self._buf = np.concatenate([self._buf, x])
        events: list[dict[str, Any]] = []
        for p in self.vad.push(x):
            events += self._step(float(p))
        self._trim()
        return events

    def _step(self, prob: float) -> list[dict[str, Any]]:
        seg = self.segmenter
        for a, b in seg.push([prob]):
            self._held.append((max(a - self.context, self._last_end), a, b))
            self._last_end = b
        events = self._release()
        ep = seg.endpointer
        start = ep.start
        # announced once it is sure to become an utterance: longer than min_speech_ms, and not in a pause
        sure = start is not None and not ep.temp_end and FRAME * ep.frame - start > ep.min_speech
        if sure and start != self._announced:
            self._announced = start
            events.append({"event": "speech_start", "start": round(max(0.0, start - seg.padder.pad) / VAD_RATE_HZ, 3),
                           "time_s": self._now()})
        return events

    def _now(self) -> float:
        """Seconds of audio the VAD has seen: when an event became known."""
        return round(min(self.received, FRAME * self.segmenter.endpointer.frame) / VAD_RATE_HZ, 3)

    def _context_end(self) -> int | None:
        """Where the first held segment's context ends, once certain: ``context`` past its end, or the next
        segment's start when that comes first (None: a segment may still start there)."""
        _, _, b = self._held[0]
        want = b + self.context
        if len(self._held) > 1:
            return min(want, self._held[1][1])
        seg = self.segmenter
        if seg.padder.pending is not None:  # the next segment, its start final
            return min(want, seg.padder.pending[0])
        ep = seg.endpointer  # a segment yet to come starts no earlier than a pad before this
        earliest = (ep.start if ep.start is not None else FRAME * ep.frame) - seg.padder.pad
        return want if earliest >= want else None

    def _release(self, end_of_stream: int | None = None) -> list[dict[str, Any]]:
        """Events for the held segments whose context is complete (all of them at the end of the stream)."""
        events = []
        while self._held:
            if end_of_stream is None:
                hi = self._context_end()
            else:
                hi = min(self._held[0][2] + self.context, self._held[1][1] if len(self._held) > 1 else end_of_stream)
            if hi is None:
                break
            lo, a, b = self._held.pop(0)
            events.append(self._utterance(a, b, lo, hi))
        return events

    def _utterance(self, a: int, b: int, lo: int, hi: int) -> dict[str, Any]:
        wave = to_model_rate(self._buf[lo - self._offset:hi - self._offset], self.model.sample_rate_hz)
        probs = self.model.probabilities([wave])[0]
        pred = self.model._answer(probs, wave, self.labels)
        return {"event": "speech_end", "start": round(a / VAD_RATE_HZ, 3), "end": round(b / VAD_RATE_HZ, 3),
                "time_s": self._now(), **pred.to_dict()}

    def _trim(self) -> None:
        """Drop the audio no utterance can still need (its context included)."""
        seg = self.segmenter
        keep = self.received - int(seg.padder.pad) - FRAME
        if seg.endpointer.start is not None:
            keep = min(keep, seg.endpointer.start - int(seg.padder.pad) - 1)
        if seg.padder.pending is not None:
            keep = min(keep, seg.padder.pending[0])
        keep = max(keep - self.context, self._last_end)
        if self._held:
            keep = min(keep, self._held[0][0])
        drop = max(0, min(keep - self._offset, self._buf.size))
        if drop:
            self._buf, self._offset = self._buf[drop:], self._offset + drop

    def finish(self) -> list[dict[str, Any]]:
        """The events the end of the stream releases (the utterance still open, if long enough); then reset."""
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._buf = np.concatenate([self._buf, tail])
        events: list[dict[str, Any]] = []
        if self.resampler is not None:
            for p in self.vad.push(tail):
                events += self._step(float(p))
        for p in self.vad.finish():
            events += self._step(float(p))
        for a, b in self.segmenter.finish(self.received):
            self._held.append((max(a - self.context, self._last_end), a, b))
            self._last_end = b
        events += self._release(end_of_stream=self.received)
        self.reset()
        return events

"""One clip's way through the service: header checks and decoding, then classification in batches.

Both halves are plain blocking functions (no web framework): the HTTP service runs
:func:`decode_clip` in a worker thread and :func:`classify_clips` on its batcher's inference
threads; a Ray Serve replica (:mod:`emovox.scale.ray_serve`) calls the same two, with
``@serve.batch`` around :func:`classify_clips`.

A clip classified in a batch gets the answer it gets alone (:meth:`EmotionModel.predict`): the
batch is zero-padded with each clip's length passed on, and the models mask what the padding touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emovox.audio import AudioError, audio_info, is_silent
from emovox.degrade.quality import measure_quality
from emovox.inference import EmotionModel
from emovox.runtime.answers import Prediction
from emovox.server.uploads import ApiError

AUDIO_FORMATS = "WAV, FLAC, Ogg/Vorbis, Ogg/Opus, MP3, AIFF"


@dataclass(frozen=True)
class ClipJob:
    """A decoded clip (float32 at the model's rate) and the label set its answer is folded into."""

    wave: np.ndarray
    labels: str | None = None
    silent: bool = False


def audio_error(e: AudioError) -> ApiError:
    """An :class:`AudioError` as the HTTP error it is: 413 for a clip too long, else 400."""
    return ApiError(413 if "too long" in str(e) else 400, str(e))


def check_header(data: bytes, *, max_duration_s: float) -> float:
    """Checks before decoding: 400 empty, 415 not audio, 413 too long. Returns the duration (s)."""
    if not data:
        raise ApiError(400, "empty upload: the audio file has 0 bytes")
    try:
        info = audio_info(data)
    except AudioError as e:
        raise ApiError(415, f"unsupported or unrecognised audio: {e}", {"accepted": AUDIO_FORMATS}) from e
    if info.duration_s > max_duration_s:
        raise ApiError(413, f"audio too long: {info.duration_s:.1f} s exceeds the maximum of "
                            f"{max_duration_s:g} s (EMOVOX_MAX_DURATION_S)",
                       {"duration_s": round(info.duration_s, 3), "max_duration_s": max_duration_s})
    return info.duration_s


def decode_clip(model: EmotionModel, data: bytes, *, labels: str | None,
                max_duration_s: float) -> tuple[ClipJob, float]:
    """Check and decode an upload for ``model`` -> (job, duration in seconds); :class:`ApiError` when bad."""
    duration = check_header(data, max_duration_s=max_duration_s)
    try:
        wave = model.load(data)
    except AudioError as e:
        raise audio_error(e) from e
    return ClipJob(wave, labels, is_silent(wave)), duration


def classify_clips(model: EmotionModel, jobs: Sequence[ClipJob]) -> list[Prediction]:
    """One model pass over decoded clips (one batch), each answer folded into its own label set."""
    probs = model.probabilities([j.wave for j in jobs], batch_size=max(1, len(jobs)))
    # _to_prediction is what EmotionModel.predict ends with: the same answer as the clip alone, its quality too
    return [model._to_prediction(p, j.labels, silent=j.silent, quality=measure_quality(j.wave, model.sample_rate_hz))
            for p, j in zip(probs, jobs)]


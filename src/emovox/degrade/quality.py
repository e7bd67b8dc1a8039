"""How good a recording is, so an answer can say why it may be uncertain.

:func:`measure_quality` estimates the speech-to-noise ratio from the loudest and quietest frames, the level of the
speech, the share of clipped samples and the audio bandwidth (the highest frequency within 60 dB of the
spectrum's peak: about 8 kHz for 16-kHz studio speech, below 4 kHz on telephone lines). The thresholds that
make a recording *poor* live here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

FRAME_S = 0.020
SNR_CAP_DB = 60.0
POOR_SNR_DB = 10.0  # below this, noise is loud enough to move the answer (benchmarks/robustness.py)
QUIET_DBFS = -45.0  # speech level below this is very quiet
CLIPPED_FRACTION = 0.01  # more than 1 % of samples on a plateau at the peak
NARROWBAND_HZ = 4500.0  # nothing within 60 dB of the spectrum's peak above this: a telephone line or 8 kHz
BANDWIDTH_FLOOR_DB = 60.0
#: What can make a recording poor, in the order ``issues`` lists them (the keys of a model's ``quality_temperature``).
QUALITY_KINDS = ("noisy", "quiet", "clipped", "narrowband")
QUALITY_FACTOR_RANGE = (0.2, 5.0)


@dataclass(frozen=True)
class InputQuality:
    snr_db: float
    speech_dbfs: float
    clipped_fraction: float
    bandwidth_hz: float
    issues: tuple[str, ...]

    @property
    def poor(self) -> bool:
        return bool(self.issues)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Which of ``QUALITY_KINDS`` the issues are (the words before each issue's figures)."""
        return tuple(k for k in QUALITY_KINDS if any(k in issue.split(" (")[0] for issue in self.issues))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["issues"] = list(self.issues)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def _frame_power(wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Mean square of each 20-ms frame, frames side by side (this runs for every answer, so it must cost little
    beside the fastest model: one reshape, no overlap)."""
    frame = int(FRAME_S * sample_rate_hz)
    n = len(wave) // frame
    if n == 0:
        return np.array([np.mean(np.square(wave, dtype=np.float64)) if len(wave) else 0.0])
    frames = wave[: n * frame].reshape(n, frame)
    return np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frame


def _snr_db(noise: float, speech: float) -> float:
    """Speech over noise from frame powers' percentiles: the loudest tenth of frames are speech (plus noise), the
    quietest tenth the noise floor (a percentile estimate; robust to short clips without a voice activity
    detector)."""
    if noise <= 1e-12:
        return SNR_CAP_DB
    return float(np.clip(10 * np.log10(max(speech - noise, 1e-12) / noise), -20.0, SNR_CAP_DB))


@lru_cache(maxsize=8)
def _window(n: int) -> np.ndarray:
    return np.hanning(n).astype(np.float32)


def _bandwidth_hz(wave: np.ndarray, sample_rate_hz: int) -> float:
    """An averaged spectrum (Hann windows of 512, no overlap: enough for a bandwidth) in NumPy: the base install
    has no SciPy."""
    n = min(512, len(wave))
    frames = wave[: len(wave) // n * n].reshape(-1, n) * _window(n)
    spectrum = np.fft.rfft(frames, axis=1)
    psd = np.mean(spectrum.real ** 2 + spectrum.imag ** 2, axis=0)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate_hz)
    above = np.nonzero(psd > np.max(psd) * 10 ** (-BANDWIDTH_FLOOR_DB / 10))[0]
    return float(freqs[above[-1]]) if len(above) else 0.0


def measure_quality(wave: np.ndarray, sample_rate_hz: int = 16000) -> InputQuality:
    """The recording's quality measures and, in ``issues``, what in them makes answers less reliable."""
    x = np.asarray(wave, dtype=np.float32)
    noise, speech = (float(v) for v in np.percentile(_frame_power(x, sample_rate_hz), [10, 90]))
    speech_dbfs = float(10 * np.log10(max(speech, 1e-12)))
    magnitude = np.abs(x)
    peak = float(np.max(magnitude)) if len(x) else 0.0
    clipped = float(np.count_nonzero(magnitude >= 0.999 * peak) / len(x)) if peak > 0 else 0.0
    snr = _snr_db(noise, speech)
    bandwidth = _bandwidth_hz(x, sample_rate_hz) if len(x) >= 64 else 0.0
    issues = []
    if snr < POOR_SNR_DB:
        issues.append(f"noisy (estimated SNR {snr:.0f} dB)")
    if speech_dbfs < QUIET_DBFS:
        issues.append(f"very quiet (speech at {speech_dbfs:.0f} dBFS)")
    if clipped > CLIPPED_FRACTION:
        issues.append(f"clipped ({100 * clipped:.1f} % of samples)")
    if 0 < bandwidth < NARROWBAND_HZ:
        issues.append(f"narrowband (nothing above {bandwidth:.0f} Hz: telephone or 8 kHz)")
    return InputQuality(snr, speech_dbfs, clipped, bandwidth, tuple(issues))


def check_quality_temperature(value, where: str = "") -> dict[str, float] | None:
    """A model's ``quality_temperature`` (``{kind: factor}``: its temperature is multiplied by each factor whose kind
    is among a recording's issues), checked: kinds from ``QUALITY_KINDS``, factors finite within
    ``QUALITY_FACTOR_RANGE``. ``None`` stays ``None``; anything else raises ``ValueError`` naming the problem."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{where}quality_temperature must be an object {{kind: factor}}, got {type(value).__name__}")
    lo, hi = QUALITY_FACTOR_RANGE
    out = {}
    for kind, factor in value.items():
        if kind not in QUALITY_KINDS:
            raise ValueError(f"{where}quality_temperature: unknown kind {kind!r}; known: {', '.join(QUALITY_KINDS)}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) \
                or not lo <= factor <= hi:
            raise ValueError(f"{where}quality_temperature[{kind!r}] must be a number in [{lo}, {hi}], got {factor!r}")
        out[kind] = float(factor)
    return out


def temperature_factor(quality: InputQuality | None, factors: dict[str, float] | None) -> float:
    """How much a model's temperature grows for this recording: the product of its factors for the recording's
    issues (1.0 for a good recording or a model without ``quality_temperature``)."""
    if quality is None or not factors:
        return 1.0
    return float(np.prod([factors.get(kind, 1.0) for kind in quality.kinds]))

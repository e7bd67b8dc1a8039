"""The single degradations, each a thin layer over audiomentations (or soundfile's codecs).

Each function takes a 16-kHz mono float32 waveform, the degradation's value (an SNR in dB, an RT60 in seconds,
a bitrate in kbit/s, a gain in dB...) and a :class:`Sources` (where babble and recorded noise come from), and
returns a waveform of the same length. Randomness inside audiomentations comes from Python's and NumPy's global
generators: :func:`seeded` fixes both around each call.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE_HZ = 16000
TELEPHONE_RATE_HZ = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
BABBLE_TALKERS = (3, 6)  # how many other speakers talk at once in babble
COLOR_DECAY_DB = {"white": 0.0, "pink": -3.01, "brown": -6.02}  # dB per octave (audiomentations' f_decay)


class DegradeError(ValueError):
    """A degradation that cannot be applied as asked (no babble clips, an unreadable noise folder...)."""


@contextlib.contextmanager
def seeded(seed: int):
    """audiomentations draws from Python's ``random`` and NumPy's global generator: fix both for one call and
    put them back afterwards, so a degradation is reproducible and leaves the caller's random state alone."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@dataclass
class Sources:
    """Where babble and recorded noise come from: ``babble`` clips of *other* speakers (paths or arrays at
    16 kHz; training speakers in training, never the evaluated ones), ``noise_dir`` a folder of noise recordings."""

    babble: Sequence[str | os.PathLike | np.ndarray] = ()
    babble_speakers: Sequence[str] = ()  # each babble clip's speaker, so a clip's own speaker can be left out
    noise_dir: str | os.PathLike | None = None
    exclude_speaker: str | None = None
    room_bank: str = "train"  # which bank of simulated rooms (evaluation uses its own)
    _loaded: dict = field(default_factory=dict, repr=False)

    def clip(self, i: int) -> np.ndarray:
        src = self.babble[i]
        if isinstance(src, np.ndarray):
            return src.astype(np.float32, copy=False)
        if i not in self._loaded:
            from ..audio import load_audio

            self._loaded[i] = load_audio(src, sample_rate_hz=SAMPLE_RATE_HZ)
            if len(self._loaded) > 256:  # keep memory bounded on long jobs
                self._loaded.pop(next(iter(self._loaded)))
        return self._loaded[i]


def _augment(transform, wave: np.ndarray) -> np.ndarray:
    out = transform(samples=np.ascontiguousarray(wave, dtype=np.float32), sample_rate=SAMPLE_RATE_HZ)
    return np.asarray(out, dtype=np.float32)


def color_noise(color: str) -> Callable[[np.ndarray, float, Sources], np.ndarray]:
    """White, pink or brown noise at ``snr_db`` (signal over noise power, whole clip), audiomentations'
    AddColorNoise."""
    decay = COLOR_DECAY_DB[color]

    def apply(wave: np.ndarray, snr_db: float, sources: Sources) -> np.ndarray:
        from audiomentations import AddColorNoise

        return _augment(AddColorNoise(min_snr_db=snr_db, max_snr_db=snr_db, min_f_decay=decay, max_f_decay=decay,
                                      p=1.0), wave)

    apply.__doc__ = f"{color} noise at an SNR in dB"
    return apply


def mix_at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``wave`` plus ``noise`` scaled to ``snr_db`` below it (RMS over the clip, audiomentations' helpers)."""
    from audiomentations.core.utils import calculate_desired_noise_rms, calculate_rms

    signal_rms, noise_rms = calculate_rms(wave), calculate_rms(noise)
    if signal_rms == 0.0 or noise_rms == 0.0:
        return wave.astype(np.float32, copy=True)
    gain = calculate_desired_noise_rms(signal_rms, snr_db) / noise_rms
    return (wave + gain * noise).astype(np.float32)


def _fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` looped (from a random offset) or cut to ``n`` samples."""
    if len(x) == 0:
        return np.zeros(n, np.float32)
    start = int(rng.integers(len(x)))
    reps = -(-(n + start) // len(x))
    return np.tile(x, reps)[start:start + n]


def babble(wave: np.ndarray, snr_db: float, sources: Sources) -> np.ndarray:
    """Other people talking behind: 3–6 clips of other speakers summed at equal level, at ``snr_db``.
    (No augmentation library makes babble from a speaker pool; the mixing itself is audiomentations'.)"""
    if not len(sources.babble):
        raise DegradeError("babble needs clips of other speakers (training speakers when training); none given")
    rng = np.random.default_rng(np.random.randint(2**31))  # drawn from the seeded global generator
    talkers = int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))
    pool = [i for i, s in enumerate(sources.babble_speakers) if s != sources.exclude_speaker] \
        if sources.exclude_speaker is not None and len(sources.babble_speakers) else list(range(len(sources.babble)))
    if not pool:
        raise DegradeError(f"babble: no clips of speakers other than {sources.exclude_speaker!r}")
    picks = rng.choice(pool, size=min(talkers, len(pool)), replace=False)
    mix = np.zeros(len(wave), np.float32)
    for i in picks:
        x = _fit_length(sources.clip(int(i)), len(wave), rng)
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        mix += x / rms if rms > 0 else x
    return mix_at_snr(wave, mix, snr_db)


def recorded_noise(wave: np.ndarray, snr_db: float, sources: Sources) -> np.ndarray:
    """Noise from the user's own recordings (``--noise-dir``) at ``snr_db``, audiomentations'
    AddBackgroundNoise."""
    from audiomentations import AddBackgroundNoise

    files = noise_files(sources.noise_dir)
    return _augment(AddBackgroundNoise(sounds_path=files, min_snr_db=snr_db, max_snr_db=snr_db, p=1.0), wave)


@lru_cache(maxsize=8)
def _noise_files_in(folder: str) -> tuple[str, ...]:
    from audiomentations.core.utils import find_audio_files

    files = sorted(str(f) for f in find_audio_files(folder))
    if not files:
        raise DegradeError(f"--noise-dir {folder}: no audio files in it (wav, flac, ogg, mp3...)")
    import soundfile as sf

    for f in files:
        try:
            sf.info(f)
        except (RuntimeError, sf.LibsndfileError) as e:
            raise DegradeError(f"--noise-dir: {f} is not readable audio ({e})") from e
    return tuple(files)


def noise_files(noise_dir: str | os.PathLike | None) -> tuple[str, ...]:
    if noise_dir is None:
        raise DegradeError("'noise' needs a folder of noise recordings: --noise-dir FOLDER")
    folder = Path(noise_dir)
    if not folder.is_dir():
        raise DegradeError(f"--noise-dir {folder}: not a folder")
    return _noise_files_in(str(folder.resolve()))


ROOM_BANK_SIZE = 16  # simulated rooms per RT60 step and bank
ROOM_RT60_STEP_S = 0.1


@lru_cache(maxsize=2048)
def room_impulse_response(rt60_s: float, bank: str, index: int) -> np.ndarray:
    """Room ``index`` of a bank: the impulse response of a shoebox room with reverberation time ``rt60_s``
    (audiomentations' RoomSimulator on pyroomacoustics, image sources up to order 3 and ray tracing for the tail,
    which reaches the target RT60 within about 10 %; room size, source and microphone places drawn from a seed
    of the bank's name, the RT60 and the index). Training and evaluation use different banks: never the same rooms."""
    import pyroomacoustics
    from audiomentations import RoomSimulator

    seed = int.from_bytes(hashlib.sha1(f"{bank}\0{rt60_s:.3f}\0{index}".encode()).digest()[:4], "little")
    impulse = np.zeros(int((1.5 * rt60_s + 0.2) * SAMPLE_RATE_HZ), np.float32)
    impulse[0] = 1.0
    with seeded(seed):
        pyroomacoustics.random.seed(seed)  # its NumPy and C++ (ray tracer) generators
        sim = RoomSimulator(min_target_rt60=rt60_s, max_target_rt60=rt60_s, calculation_mode="rt60",
                            min_mic_distance=0.5, max_mic_distance=2.5, use_ray_tracing=True, max_order=3,
                            ray_tracing_options={"receiver_radius": 0.5, "n_rays": 2000, "energy_thres": 1e-5},
                            leave_length_unchanged=True, p=1.0)
        return _augment(sim, impulse)


def room(wave: np.ndarray, rt60_s: float, sources: Sources) -> np.ndarray:
    """Speech in a simulated room with reverberation time ``rt60_s`` (to 0.1 s): one of the bank's rooms
    (:func:`room_impulse_response`; simulating a room costs about a second, so each is simulated once per process
    and reused), convolved with SciPy's FFT convolution, same length and level as the input."""
    from scipy.signal import fftconvolve

    rt60 = round(rt60_s / ROOM_RT60_STEP_S) * ROOM_RT60_STEP_S
    rir = room_impulse_response(rt60, sources.room_bank, int(np.random.randint(ROOM_BANK_SIZE)))
    out = fftconvolve(wave, rir)[: len(wave)].astype(np.float32)
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    ref = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
    out_rms = float(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
    if out_rms > 0 and ref > 0:  # keep the clip's level: a room changes the sound, not the recording gain
        out *= min(ref / out_rms, 0.99 / peak if peak > 0 else 1.0)
    return out


def _resample(wave: np.ndarray, src: int, dst: int) -> np.ndarray:
    import soxr

    return soxr.resample(wave, src, dst).astype(np.float32)


def _same_length(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def companding(law: str) -> Callable[[np.ndarray, float, Sources], np.ndarray]:
    """G.711 mu-law or A-law at 8 kHz, through soundfile's WAV encoder, back to 16 kHz."""
    subtype = {"mulaw": "ULAW", "alaw": "ALAW"}[law]

    def apply(wave: np.ndarray, _value: float, sources: Sources) -> np.ndarray:
        import soundfile as sf

        narrow = _resample(wave, SAMPLE_RATE_HZ, TELEPHONE_RATE_HZ)
        buf = io.BytesIO()
        sf.write(buf, np.clip(narrow, -1.0, 1.0), TELEPHONE_RATE_HZ, format="WAV", subtype=subtype)
        buf.seek(0)
        decoded, _ = sf.read(buf, dtype="float32")
        return _same_length(_resample(decoded, TELEPHONE_RATE_HZ, SAMPLE_RATE_HZ), len(wave))

    return apply


def telephone(wave: np.ndarray, law_code: float, sources: Sources) -> np.ndarray:
    """A telephone line: 300–3400 Hz (audiomentations' high- and low-pass filters), 8 kHz, G.711 mu-law
    (``telephone`` or ``telephone:0``) or A-law (``telephone:1``)."""
    from audiomentations import HighPassFilter, LowPassFilter

    lo, hi = TELEPHONE_BAND_HZ
    x = _augment(HighPassFilter(min_cutoff_freq=lo, max_cutoff_freq=lo, min_rolloff=24, max_rolloff=24, p=1.0), wave)
    x = _augment(LowPassFilter(min_cutoff_freq=hi, max_cutoff_freq=hi, min_rolloff=24, max_rolloff=24, p=1.0), x)
    return companding("alaw" if law_code >= 0.5 else "mulaw")(x, 0.0, sources)


#: The bitrates an MPEG-2 layer III encoder offers at 16 kHz; a drawn bitrate is moved to the nearest.
MP3_BITRATES = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def mp3(wave: np.ndarray, kbps: float, sources: Sources) -> np.ndarray:
    """MP3 at the encoder's bitrate nearest ``kbps`` (audiomentations' Mp3Compression; its encoder delay is
    compensated, length kept)."""
    from audiomentations import Mp3Compression

    rate = min(MP3_BITRATES, key=lambda b: abs(b - kbps))
    return _same_length(_augment(Mp3Compression(min_bitrate=rate, max_bitrate=rate, p=1.0), wave), len(wave))


@lru_cache(maxsize=32)
def opus_level(kbps: float) -> float:
    """libsndfile's Opus ``compression_level`` that gives about ``kbps`` on speech-like audio: libsndfile takes
    a level in [0, 1], not a bitrate, so the level is found by bisection on the encoded size of 2 s of noise."""
    import soundfile as sf

    probe = np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE_HZ).astype(np.float32) * 0.1

    def rate(level: float) -> float:
        buf = io.BytesIO()
        sf.write(buf, probe, SAMPLE_RATE_HZ, format="OGG", subtype="OPUS", compression_level=level)
        return len(buf.getvalue()) * 8 / 2.0 / 1000.0

    lo, hi = 0.0, 0.999
    for _ in range(10):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) > kbps else (lo, mid)
    return (lo + hi) / 2


def opus(wave: np.ndarray, kbps: float, sources: Sources) -> np.ndarray:
    """Opus at about ``kbps`` through soundfile (libsndfile's Ogg/Opus encoder), length kept."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), SAMPLE_RATE_HZ, format="OGG", subtype="OPUS",
             compression_level=opus_level(float(round(kbps))))  # whole kbit/s: each level is found once
    buf.seek(0)
    decoded, _ = sf.read(buf, dtype="float32")
    return _same_length(decoded, len(wave))


def gain(wave: np.ndarray, db: float, sources: Sources) -> np.ndarray:
    """The clip ``db`` louder (negative: quieter), audiomentations' Gain; no clipping is added."""
    from audiomentations import Gain

    return _augment(Gain(min_gain_db=db, max_gain_db=db, p=1.0), wave)


def clipping(wave: np.ndarray, percent: float, sources: Sources) -> np.ndarray:
    """Hard clipping of the loudest ``percent`` % of samples (audiomentations' ClippingDistortion)."""
    from audiomentations import ClippingDistortion

    p = int(round(percent))
    return _augment(ClippingDistortion(min_percentile_threshold=p, max_percentile_threshold=p, p=1.0), wave)


@dataclass(frozen=True)
class Kind:
    apply: Callable[[np.ndarray, float, Sources], np.ndarray]
    unit: str  # what the value is, for messages
    default: float | None  # the value when the spec gives none
    limits: tuple[float, float]
    version: int = 1  # bumped when what it produces changes: cached copies made before are stale


KINDS: dict[str, Kind] = {
    "white": Kind(color_noise("white"), "SNR in dB", None, (-10.0, 60.0)),
    "pink": Kind(color_noise("pink"), "SNR in dB", None, (-10.0, 60.0)),
    "brown": Kind(color_noise("brown"), "SNR in dB", None, (-10.0, 60.0)),
    "babble": Kind(babble, "SNR in dB", None, (-10.0, 60.0)),
    "noise": Kind(recorded_noise, "SNR in dB", None, (-10.0, 60.0)),
    "room": Kind(room, "RT60 in s", None, (0.1, 2.0), version=2),
    "telephone": Kind(telephone, "0 mu-law, 1 A-law", 0.0, (0.0, 1.0)),
    "mulaw": Kind(companding("mulaw"), "no value", 0.0, (0.0, 0.0)),
    "alaw": Kind(companding("alaw"), "no value", 0.0, (0.0, 0.0)),
    "mp3": Kind(mp3, "kbit/s", 32.0, (8.0, 160.0)),
    "opus": Kind(opus, "kbit/s", 12.0, (6.0, 128.0)),
    "gain": Kind(gain, "dB", None, (-60.0, 30.0)),
    "clip": Kind(clipping, "% of samples clipped", 5.0, (0.0, 40.0)),
}

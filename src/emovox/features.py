"""Log-mel and MFCC front-ends as ``torch.nn.Module``s on batches of waveforms ``(batch, samples)``.

The same modules serve training, evaluation, inference, serving and export, so features can
never drift between them. They are numerically equal to librosa's ``melspectrogram`` /
``power_to_db`` / ``mfcc`` with the same parameters (Slaney mel scale and area normalisation,
periodic Hann window, zero padding when ``center=True``); ``tests/test_features.py`` checks
that to a relative tolerance of 1e-4 on power and 1e-3 dB on the log scale.

Two STFT implementations give the same numbers: ``torch.stft`` (fast, used for training and
inference) and a fixed ``Conv1d`` holding the windowed DFT basis (``stft_mode="conv"``), which
exports to ONNX, Core ML and TorchScript as plain convolutions.

``librosa_per_frame`` with ``peak_normalize`` (the ``framewise-librosa-mfcc13`` preset) reproduces
the streaming MFCC-LSTM's backend, which peak-normalises the clip and calls ``librosa.feature.mfcc`` once per
400-sample frame: here all frames go through one batched ``rfft`` (see ``docs/features.md``).

``kind="waveform"`` is the front-end of models that take raw samples (the pretrained-backbone
``ssl`` family, whose backbone is its own front-end): 16 kHz samples pass through unchanged as
``(batch, 1, samples)``. A "frame" is then one sample (``n_fft = win_length = hop_length = 1``,
``center=False``, one "feature"), so frame counts, sample counts and padding lengths follow from
the same formulas as for log-mel configs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FeatureKind = Literal["logmel", "mfcc", "waveform"]

#: librosa's default STFT hop in ``librosa.feature.mfcc`` / ``melspectrogram`` (``librosa_per_frame``).
LIBROSA_HOP = 512
#: What ``peak_normalize`` adds to the peak (the streaming MFCC-LSTM: ``audio / (np.max(np.abs(audio)) + 1e-9)``).
PEAK_EPS = 1e-9

#: What ``kind="waveform"`` fixes: a frame is one sample, one feature, no STFT.
_WAVEFORM_FIELDS = {"n_fft": 1, "win_length": 1, "hop_length": 1, "center": False, "n_mels": 1}


@dataclass(frozen=True)
class FeatureConfig:
    """Every parameter of the front-end; saved inside every model so it is rebuilt exactly."""

    kind: FeatureKind = "logmel"
    sample_rate_hz: int = 16000
    n_fft: int = 512
    win_length: int | None = 400  # None: n_fft
    hop_length: int = 160
    n_mels: int = 64
    fmin_hz: float = 0.0
    fmax_hz: float | None = None  # None: Nyquist
    center: bool = True
    power: float = 2.0
    log_floor: float = 1e-10  # librosa's amin: 10*log10(max(S, floor))
    top_db: float | None = None  # librosa's top_db (clip relative to each clip's max); None: off
    n_mfcc: int = 13
    #: MFCC only: drop frames whose samples are all exactly zero (the streaming MFCC-LSTM).
    skip_zero_frames: bool = False
    #: Divide each clip by ``max(|x|) + 1e-9`` before anything else (the streaming MFCC-LSTM's backend).
    peak_normalize: bool = False
    #: Analyse each ``win_length`` frame alone, as the streaming MFCC-LSTM's loop calls
    #: ``librosa.feature.mfcc(y=frame, n_fft=n_fft)`` per frame: frames are cut without centre
    #: padding (``librosa.util.frame``), librosa zero-pads each by ``n_fft // 2`` on both sides
    #: (``center=True``, ``pad_mode='constant'``), so the frame's samples meet the periodic Hann
    #: window of ``n_fft`` points from its peak on, and ``top_db`` is relative to each frame's own
    #: maximum. Needs ``center=False`` and ``win_length`` < 512 (librosa's hop: one column per frame).
    librosa_per_frame: bool = False
    #: Fixed number of frames for models with a fixed input (crop/pad); None: variable.
    num_frames: int | None = None
    #: Log-mel only: shift each clip's log-mel so that its speech level (:func:`speech_level_db`) is
    #: this many dB, which makes the features independent of the recording's gain; None: off.
    level_db: float | None = None
    #: The most a quiet clip is raised by ``level_db`` (near-silence is not blown up to speech level).
    level_max_gain_db: float = 40.0

    def __post_init__(self):
        if self.kind not in ("logmel", "mfcc", "waveform"):
            raise ValueError(f"FeatureConfig.kind must be 'logmel' or 'mfcc' (or 'waveform': raw samples, for "
                             f"models with a pretrained backbone), got {self.kind!r}")
        if self.kind == "waveform":
            self._fix_waveform_fields()
        wl = self.win_length or self.n_fft
        if wl > self.n_fft:
            raise ValueError(f"win_length ({wl}) must not exceed n_fft ({self.n_fft})")
        if self.hop_length <= 0 or self.n_fft <= 0 or self.n_mels <= 0:
            raise ValueError("n_fft, hop_length and n_mels must be positive")
        if self.kind == "mfcc" and not (0 < self.n_mfcc <= self.n_mels):
            raise ValueError(f"n_mfcc must be in 1..n_mels ({self.n_mels}), got {self.n_mfcc}")
        if self.level_db is not None and self.kind != "logmel":
            raise ValueError(f"level_db (speech-level normalisation) applies to log-mel features, not {self.kind!r}")
        if self.level_max_gain_db < 0:
            raise ValueError(f"level_max_gain_db must not be negative, got {self.level_max_gain_db}")
        if self.librosa_per_frame:
            self._check_librosa_per_frame()

    def _check_librosa_per_frame(self) -> None:
        wl = self.window_length
        if self.center or wl > min(self.n_fft // 2, LIBROSA_HOP - 1):
            raise ValueError(
                f"librosa_per_frame analyses each win_length frame as one librosa call: it needs center=False "
                f"and win_length at most min(n_fft // 2, {LIBROSA_HOP - 1}) (one column per call), got "
                f"center={self.center}, win_length={wl}, n_fft={self.n_fft}")

    def _fix_waveform_fields(self) -> None:
        """Set the STFT fields to their waveform values; refuse values that ask for an STFT."""
        defaults = {f.name: f.default for f in fields(self)}
        for name, value in _WAVEFORM_FIELDS.items():
            got = getattr(self, name)
            if got != value and got != defaults[name]:
                raise ValueError(f"FeatureConfig(kind='waveform') passes samples through: {name} must be left at "
                                 f"its default, got {got!r}")
            object.__setattr__(self, name, value)
        if (self.num_frames is not None or self.skip_zero_frames or self.top_db is not None or self.peak_normalize
                or self.librosa_per_frame):
            raise ValueError("FeatureConfig(kind='waveform') takes no num_frames, skip_zero_frames, top_db, "
                             "peak_normalize or librosa_per_frame")

    @property
    def n_features(self) -> int:
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    @property
    def window_length(self) -> int:
        return self.win_length or self.n_fft

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate_hz / self.hop_length

    @property
    def frame_span(self) -> int:
        """Samples one analysis frame covers: ``n_fft`` (the window centred in it), or ``win_length``
        with ``librosa_per_frame`` (the frame is zero-padded to ``n_fft`` inside the transform)."""
        return self.window_length if self.librosa_per_frame else self.n_fft

    @property
    def window_offset(self) -> int:
        """Where the window's ``win_length`` samples start inside a frame of ``frame_span`` samples."""
        return 0 if self.librosa_per_frame else (self.n_fft - self.window_length) // 2

    def num_frames_for(self, num_samples: int) -> int:
        if self.center:
            return 1 + num_samples // self.hop_length
        span = self.frame_span
        return 0 if num_samples < span else 1 + (num_samples - span) // self.hop_length

    def samples_for(self, num_frames: int) -> int:
        """Fewest samples that give ``num_frames`` frames."""
        if self.center:
            return (num_frames - 1) * self.hop_length
        return self.frame_span + (num_frames - 1) * self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FeatureConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> FeatureConfig:
        return replace(self, **changes)


class _Presets(dict):
    """The presets by name; an older name in :data:`PRESET_ALIASES` looks up (``[]``, ``in``, ``get``)
    the preset it points to, but is not listed again (iteration, ``keys()``, ``values()``)."""

    def __missing__(self, name: str) -> FeatureConfig:
        if name in PRESET_ALIASES:
            return self[PRESET_ALIASES[name]]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or name in PRESET_ALIASES

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default


PRESETS: dict[str, FeatureConfig] = _Presets({
    # emovox's default front-end: 25 ms windows, 10 ms hop, 64 mel bins.
    "logmel64": FeatureConfig(),
    # The Core ML mobile CNN's Core ML input (alias seed000): 64 mel bins, 2048-point FFT, hop 512, 100 frames.
    # 100 frames x 512 samples = 51,200 samples = 3.2 s at 16 kHz (the document's "~1 s" is wrong).
    "logmel64-hop512-100f": FeatureConfig(kind="logmel", n_fft=2048, win_length=None, hop_length=512, n_mels=64,
                                          num_frames=100),
    # The Keras backend CNN's Keras CNN input (alias seed001): 64 mel bins x about 32 frames, i.e. 1 s at hop 512
    # (32 x 512 samples = 1.02 s at 16 kHz), FFT 2048.
    "logmel64-hop512-32f": FeatureConfig(kind="logmel", n_fft=2048, win_length=None, hop_length=512, n_mels=64,
                                         num_frames=32),
    # Streaming MFCC (alias seed003): 13 coefficients per 25 ms frame, 10 ms hop, all-zero frames skipped.
    # center=False so every frame depends only on its own 400 samples: frame-by-frame streaming
    # gives exactly the offline features. emovox's own 40-mel reading of the streaming MFCC-LSTM's plan (what the
    # shipped `streaming` model uses), not the numbers of the seed's backend: those are
    # "framewise-librosa-mfcc13".
    "mfcc13-streaming": FeatureConfig(kind="mfcc", n_fft=512, win_length=400, hop_length=160, n_mels=40,
                                      n_mfcc=13, center=False, skip_zero_frames=True),
    # The streaming MFCC-LSTM's backend exactly: the clip divided by max|x| + 1e-9, 400-sample frames every 160
    # samples (librosa.util.frame), all-zero frames skipped, and per frame the column mean of
    # librosa.feature.mfcc(y=frame, sr=16000, n_mfcc=13) with librosa's defaults (FFT 2048 of the
    # zero-padded frame, 128 Slaney mels, power_to_db with top_db 80 per frame, ortho DCT-II).
    # Computed in one batched transform; equal to the seed's loop within 1e-3 (tests/test_features.py).
    "framewise-librosa-mfcc13": FeatureConfig(kind="mfcc", n_fft=2048, win_length=400, hop_length=160, n_mels=128,
                                              n_mfcc=13, center=False, top_db=80.0, skip_zero_frames=True,
                                              peak_normalize=True, librosa_per_frame=True),
    "mfcc13": FeatureConfig(kind="mfcc", n_fft=512, win_length=400, hop_length=160, n_mels=40, n_mfcc=13),
    # Narrow-band log-mel (the CRNN's default): 50 ms windows resolve the pitch harmonics that a 25 ms
    # window smears (Hann main lobe 80 Hz instead of 160 Hz) and 128 bands are ~23 Hz apart below 1 kHz.
    # On RAVDESS (speaker fold 1) it lifted the CRNN from 41 to 49 UAR.
    "logmel128": FeatureConfig(kind="logmel", n_fft=1024, win_length=800, hop_length=160, n_mels=128),
    # logmel128 with speech-level normalisation: the same frames shifted so that every clip's speech
    # level is 0 dB whatever the microphone gain (RAVDESS clips' levels span -12..+15 dB, 5th to 95th
    # percentile, CREMA-D's 0..+20 dB).
    "logmel128l": FeatureConfig(kind="logmel", n_fft=1024, win_length=800, hop_length=160, n_mels=128,
                                level_db=0.0),
    # The `fast` model's front-end: logmel64's 25 ms windows and 64 bands every 20 ms (half the frames).
    "logmel64h20": FeatureConfig(kind="logmel", n_fft=512, win_length=400, hop_length=320, n_mels=64),
    # logmel64h20's frames and bands with logmel128's 50 ms windows (pitch harmonics resolved) at the
    # same network cost: a cheap front-end for a small CRNN.
    "logmel64w50h20": FeatureConfig(kind="logmel", n_fft=1024, win_length=800, hop_length=320, n_mels=64),
    # Raw 16 kHz samples for models with a pretrained speech backbone as their front-end (ssl).
    "waveform": FeatureConfig(kind="waveform"),
})

#: Older preset names, after the user's documents: they still load (recipes, config files, command
#: lines, training checkpoints that name them) and mean exactly the preset they point to.
PRESET_ALIASES: dict[str, str] = {
    "seed000": "logmel64-hop512-100f",
    "seed001": "logmel64-hop512-32f",
    "seed003": "mfcc13-streaming",
}


def preset_choices() -> str:
    """The presets for a message or ``--help``: ``logmel64, ..., waveform (older names: seed000 = ...)``."""
    aliases = ", ".join(f"{a} = {n}" for a, n in PRESET_ALIASES.items())
    return f"{', '.join(PRESETS)} (older names: {aliases})"


def preset(name: str) -> FeatureConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown feature preset {name!r}; available: {preset_choices()}") from None



def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mels)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


@functools.lru_cache(maxsize=32)
def mel_filterbank(sample_rate_hz: int, n_fft: int, n_mels: int, fmin_hz: float = 0.0,
                   fmax_hz: float | None = None) -> np.ndarray:
    """``(n_mels, 1 + n_fft // 2)`` Slaney-normalised triangular filters (== librosa.filters.mel)."""
    fmax = sample_rate_hz / 2 if fmax_hz is None else float(fmax_hz)
    fftfreqs = np.linspace(0, sample_rate_hz / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin_hz), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=32)
def dct_matrix(n_mfcc: int, n_mels: int) -> np.ndarray:
    """``(n_mfcc, n_mels)`` orthonormal DCT-II (== scipy.fft.dct(type=2, norm='ortho'))."""
    n = np.arange(n_mels)
    k = np.arange(n_mfcc)[:, None]
    basis = np.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    basis[0] /= math.sqrt(2.0)
    basis = basis.astype(np.float32)
    basis.setflags(write=False)
    return basis


def padded_window(cfg: FeatureConfig) -> torch.Tensor:
    """The window over one frame of ``cfg.frame_span`` samples (float64).

    Usually a periodic Hann of ``win_length`` centred in ``n_fft`` zeros. With ``librosa_per_frame``:
    the ``win_length`` values of a periodic Hann of ``n_fft`` points from its centre on, which is
    where librosa's ``center=True`` zero padding puts a lone frame's samples (the frame's position
    in the FFT only changes the phase, not the power).
    """
    wl = cfg.window_length
    if cfg.librosa_per_frame:
        return torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float64)[cfg.n_fft // 2 : cfg.n_fft // 2 + wl]
    win = torch.hann_window(wl, periodic=True, dtype=torch.float64)
    left = (cfg.n_fft - wl) // 2
    return F.pad(win, (left, cfg.n_fft - wl - left))


#: The quantile of frame energies that :func:`speech_level_db` takes as a clip's level.
LEVEL_QUANTILE = 0.9
_DB_TO_LN = math.log(10.0) / 10.0


def speech_level_db(logmel: torch.Tensor, lengths: torch.Tensor | None = None,
                    quantile: float = LEVEL_QUANTILE) -> torch.Tensor:
    """A clip's speech level in dB: the ``quantile`` of its frame energies (the mel power summed over
    bands, in dB) over its real frames. ``logmel``: ``(n_mels, frames)`` or ``(batch, n_mels, frames)``;
    ``lengths``: real frames per clip of a padded batch. Returns ``()`` or ``(batch,)``.

    The 90th percentile sits in the loud vowels whatever share of the clip is pause, and it moves
    by exactly ``20 log10 g`` when the waveform is scaled by ``g`` (every frame's energy does).
    Sort-and-gather, so it exports to ONNX and Core ML.
    """
    energy = torch.logsumexp(logmel * _DB_TO_LN, dim=-2) / _DB_TO_LN  # (..., frames)
    # frame counts and indices computed from the data, not Python ints: traced graphs stay dynamic
    position = torch.ones_like(energy).cumsum(-1)  # 1, 2, ..., frames
    if lengths is None:
        n = position[..., -1:]
    else:
        n = lengths.to(energy.device, energy.dtype)[:, None]
        energy = torch.where(position > n, torch.tensor(float("inf"), dtype=energy.dtype), energy)
    k = torch.floor(quantile * (n - 1)).long()
    return energy.sort(dim=-1).values.gather(-1, k)[..., 0]


def normalize_level(logmel: torch.Tensor, cfg: FeatureConfig, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Shift log-mel dB so the clip's :func:`speech_level_db` is ``cfg.level_db`` (raised by at most
    ``cfg.level_max_gain_db``): exactly what scaling the waveform to that level would give.
    Identity when ``cfg.level_db`` is None."""
    if cfg.level_db is None:
        return logmel
    gain = (cfg.level_db - speech_level_db(logmel, lengths)).clamp(max=cfg.level_max_gain_db)
    return logmel + gain[..., None, None]


def prepare_input(raw: torch.Tensor, cfg: FeatureConfig, normalize: nn.Module,
                  lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The pipeline's prepared-input stage, after crop/pad and zero-frame skipping: speech-level
    normalisation (log-mel configs with ``level_db``), then standardisation with the training
    statistics (``normalize``: a :class:`Normalize`). ``(..., n_features, frames)``; trace-safe.
    Training batches, evaluation, inference, streaming and the exported graphs all call it."""
    return normalize(normalize_level(raw, cfg, lengths))



class _Spectrogram(nn.Module):
    """Power spectrogram ``(batch, 1 + n_fft//2, frames)``; ``stft_mode`` 'torch' or 'conv'."""

    def __init__(self, cfg: FeatureConfig, stft_mode: str = "torch"):
        super().__init__()
        if stft_mode not in ("torch", "conv"):
            raise ValueError(f"stft_mode must be 'torch' or 'conv', got {stft_mode!r}")
        self.cfg = cfg
        self.stft_mode = stft_mode
        window = padded_window(cfg)
        self.register_buffer("window", window.float(), persistent=False)
        if stft_mode == "conv":
            n_bins = cfg.n_fft // 2 + 1
            t = torch.arange(cfg.frame_span, dtype=torch.float64)
            k = torch.arange(n_bins, dtype=torch.float64)[:, None]
            ang = 2 * math.pi * k * t / cfg.n_fft
            basis = torch.cat([torch.cos(ang) * window, -torch.sin(ang) * window], dim=0)
            self.register_buffer("basis", basis.float()[:, None, :], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.center:
            x = F.pad(x, (cfg.n_fft // 2, cfg.n_fft // 2))
        if self.stft_mode == "torch" and cfg.librosa_per_frame:
            # each win_length frame zero-padded to n_fft by the FFT itself: one batched rfft
            spec = torch.fft.rfft(x.unfold(-1, cfg.frame_span, cfg.hop_length) * self.window, n=cfg.n_fft).transpose(-2, -1)
            re, im = spec.real, spec.imag
            mag2 = torch.addcmul(re * re, im, im)
        elif self.stft_mode == "torch":
            spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop_length, window=self.window, center=False,
                              return_complex=True)
            re, im = spec.real, spec.imag
            mag2 = torch.addcmul(re * re, im, im)  # re² + im²: one pass less over the strided views
        else:
            out = F.conv1d(x.unsqueeze(1), self.basis, stride=cfg.hop_length)
            re, im = out.chunk(2, dim=1)
            mag2 = re.square() + im.square()
        return mag2 if cfg.power == 2.0 else mag2.pow(cfg.power / 2.0)


class LogMel(nn.Module):
    """Waveforms ``(batch, samples)`` → log-mel ``(batch, n_mels, frames)`` in dB (power_to_db, ref=1)."""

    def __init__(self, cfg: FeatureConfig | None = None, *, stft_mode: str = "torch"):
        super().__init__()
        cfg = cfg or FeatureConfig()
        self.cfg = cfg
        self.spectrogram = _Spectrogram(cfg, stft_mode)
        fb = mel_filterbank(cfg.sample_rate_hz, cfg.n_fft, cfg.n_mels, cfg.fmin_hz, cfg.fmax_hz)
        self.register_buffer("mel_fb", torch.from_numpy(fb.copy()), persistent=False)

    def mel_power(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.mel_fb, self.spectrogram(x))

    def forward(self, x: torch.Tensor, peak: torch.Tensor | None = None) -> torch.Tensor:
        """``peak`` (``peak_normalize`` only): the peak to divide by, ``(batch, 1)``; default each
        clip's own ``max(|x|)`` (a stream passes the peak of everything received so far)."""
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if self.cfg.peak_normalize:
            x = x / ((x.abs().amax(dim=-1, keepdim=True) if peak is None else peak) + PEAK_EPS)
        s = self.mel_power(x)
        db = 10.0 * torch.log10(torch.clamp(s, min=self.cfg.log_floor))
        if self.cfg.top_db is not None:  # librosa_per_frame: relative to each frame's max, as one librosa call
            peak_db = db.amax(dim=-2 if self.cfg.librosa_per_frame else (-2, -1), keepdim=True)
            db = torch.maximum(db, peak_db - self.cfg.top_db)
        return db


class MFCC(nn.Module):
    """Waveforms ``(batch, samples)`` → MFCC ``(batch, n_mfcc, frames)`` (== librosa.feature.mfcc)."""

    def __init__(self, cfg: FeatureConfig | None = None, *, stft_mode: str = "torch"):
        super().__init__()
        cfg = cfg or PRESETS["mfcc13"]
        self.cfg = cfg
        self.logmel = LogMel(cfg, stft_mode=stft_mode)
        self.register_buffer("dct", torch.from_numpy(dct_matrix(cfg.n_mfcc, cfg.n_mels).copy()),
                             persistent=False)
        # c0 sums n_mels values of up to ~100 dB: accumulated in float64 it stays within float32
        # rounding of librosa's (float32 accumulation drifts by ~1e-3 over 128 mels at the floor).
        # Exported graphs (conv STFT) stay float32: Core ML has no float64.
        self.accumulate_float64 = stft_mode == "torch"

    def forward(self, x: torch.Tensor, peak: torch.Tensor | None = None) -> torch.Tensor:
        logmel = self.logmel(x, peak)
        if self.accumulate_float64:
            return torch.matmul(self.dct.double(), logmel.double()).to(logmel.dtype)
        return torch.matmul(self.dct, logmel)


class Waveform(nn.Module):
    """Waveforms ``(batch, samples)`` → ``(batch, 1, samples)`` unchanged (``kind="waveform"``)."""

    def __init__(self, cfg: FeatureConfig | None = None, *, stft_mode: str = "torch"):
        super().__init__()
        self.cfg = cfg or PRESETS["waveform"]
        self.stft_mode = stft_mode  # no STFT: accepted so every front-end is built the same way

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
        return x.unsqueeze(1)


class WhisperLogMel(nn.Module):
    """Whisper's front-end: waveforms ``(batch, samples)`` at 16 kHz → ``(batch, n_mels, samples // 160)``.

    As OpenAI's ``whisper.audio.log_mel_spectrogram`` (and transformers' ``WhisperFeatureExtractor``):
    400-point STFT of a periodic Hann window, hop 160, centred with reflect padding, the last frame
    dropped; power through Slaney mel filters (librosa's, 0-8 kHz); ``log10`` floored at 1e-10 and
    at the clip's maximum minus 8; then ``(x + 4) / 4``. ``lengths`` (samples per clip of a
    zero-padded batch, each > 200) make each clip's frames what it gets alone: reflect padding at its own
    end, its maximum over its own ``length // 160`` frames.
    """

    n_fft = 400
    hop_length = 160

    def __init__(self, n_mels: int = 80, sample_rate_hz: int = 16000):
        super().__init__()
        if sample_rate_hz != 16000:
            raise ValueError(f"Whisper's front-end is defined at 16 kHz, got {sample_rate_hz} Hz")
        self.n_mels = n_mels
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        # exported graphs (ONNX has no complex STFT) compute the same spectrum as a convolution with the DFT basis
        self.traceable = _Spectrogram(FeatureConfig(kind="logmel", n_fft=self.n_fft, win_length=self.n_fft,
                                                    hop_length=self.hop_length, n_mels=n_mels, center=False), "conv")
        fb = mel_filterbank(sample_rate_hz, self.n_fft, n_mels)
        self.register_buffer("mel_fb", torch.from_numpy(fb.copy()), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return int(num_samples) // self.hop_length

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 1:
            x = x.unsqueeze(0)
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if lengths is not None:  # each clip reflected at its own end, as it is alone
            power = self._power(_reflect_clips(x, lengths, self.n_fft // 2), tracing)
        elif tracing:
            power = self._power(F.pad(x[:, None], (self.n_fft // 2, self.n_fft // 2), mode="reflect")[:, 0], True)
        else:
            spec = torch.stft(x, self.n_fft, self.hop_length, window=self.window, center=True, pad_mode="reflect",
                              return_complex=True)[..., :-1]
            power = torch.addcmul(spec.real * spec.real, spec.imag, spec.imag)
        logmel = torch.log10(torch.matmul(self.mel_fb, power).clamp_min(1e-10))
        if lengths is None:
            peak = logmel.amax(dim=(-2, -1), keepdim=True)
        else:
            real = torch.arange(logmel.shape[-1], device=x.device)[None, :] < (lengths[:, None] // self.hop_length)
            peak = logmel.masked_fill(~real[:, None, :], float("-inf")).amax(dim=(-2, -1), keepdim=True)
        return (torch.maximum(logmel, peak - 8.0) + 4.0) / 4.0

    def _power(self, padded: torch.Tensor, tracing: bool) -> torch.Tensor:
        """Power spectrum of already padded samples, the last frame dropped (as the centred STFT)."""
        if tracing:
            return self.traceable(padded)[..., :-1]
        spec = torch.stft(padded, self.n_fft, self.hop_length, window=self.window, center=False,
                          return_complex=True)[..., :-1]
        return torch.addcmul(spec.real * spec.real, spec.imag, spec.imag)


def _reflect_clips(x: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """A zero-padded batch ``(batch, samples)`` → ``(batch, samples + 2 pad)``, each clip reflect-padded at its own
    ends (as ``F.pad(mode="reflect")`` of the clip alone; needs lengths > pad); past that, its first sample."""
    i = (torch.arange(x.shape[-1] + 2 * pad, device=x.device)[None, :] - pad).abs()
    last = lengths.to(torch.int64)[:, None] - 1
    return torch.gather(x, 1, torch.where(i > last, 2 * last - i, i).clamp_min(0))


def build_frontend(cfg: FeatureConfig, *, stft_mode: str = "torch") -> nn.Module:
    if cfg.kind == "waveform":
        return Waveform(cfg, stft_mode=stft_mode)
    return MFCC(cfg, stft_mode=stft_mode) if cfg.kind == "mfcc" else LogMel(cfg, stft_mode=stft_mode)


@dataclass
class FeatureStats:
    """Per-feature mean and standard deviation, fitted on training data and saved with a model."""

    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, feature_list, *, min_std: float = 1e-3) -> FeatureStats:
        """Fit from an iterable of ``(n_features, frames)`` tensors (streamed, float64 sums)."""
        total = None
        sq = None
        count = 0
        for f in feature_list:
            f = torch.as_tensor(f, dtype=torch.float64)
            s, s2 = f.sum(dim=-1), f.square().sum(dim=-1)
            total = s if total is None else total + s
            sq = s2 if sq is None else sq + s2
            count += f.shape[-1]
        if not count:
            raise ValueError("cannot fit feature statistics on zero frames")
        mean = total / count
        var = (sq / count - mean.square()).clamp_min(0)
        std = var.sqrt().clamp_min(min_std)
        return cls(mean=mean.tolist(), std=std.tolist())

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureStats:
        if len(d["mean"]) != len(d["std"]):
            raise ValueError("feature statistics: mean and std differ in length")
        return cls(mean=[float(v) for v in d["mean"]], std=[float(v) for v in d["std"]])


class Normalize(nn.Module):
    """``(batch, n_features, frames)`` → standardised with saved :class:`FeatureStats`."""

    def __init__(self, stats: FeatureStats | None, n_features: int):
        super().__init__()
        if stats is None:
            mean, std = torch.zeros(n_features), torch.ones(n_features)
        else:
            if len(stats.mean) != n_features:
                raise ValueError(f"feature statistics have {len(stats.mean)} values, features have {n_features}")
            mean, std = torch.tensor(stats.mean), torch.tensor(stats.std)
        self.register_buffer("mean", mean.float().view(-1, 1))
        self.register_buffer("std", std.float().view(-1, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std

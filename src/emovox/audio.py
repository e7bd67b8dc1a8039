"""Audio input: decode, mix to mono, resample, validate.

Every path into emovox (training, evaluation, CLI, HTTP, streaming) goes through
:func:`load_audio`, so a clip is decoded the same way everywhere: 16 kHz mono float32 in [-1, 1].

Decoding is done by libsndfile (through ``soundfile``), which sniffs the container from the
bytes, not from the file name: AIFF data behind a ``.wav`` name decodes as AIFF. Supported:
WAV (8/16/24/32-bit int, 32/64-bit float), FLAC, Ogg/Vorbis, Ogg/Opus, MP3, AIFF.
Resampling uses ``soxr``: its high quality (``HQ``, 20-bit) unless the caller (a model whose config says
``resample_quality``) asks for ``MQ`` (16-bit, the same passband; about 40 % cheaper).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import soxr

from emovox.defaults import MAX_CLIP_S
from emovox.errors import AudioError

SAMPLE_RATE_HZ = 16000
#: soxr's quality for every resampling unless a model's config says otherwise (``resample_quality``).
RESAMPLE_QUALITY = "HQ"
#: What a model may ask for. soxr's LQ and QQ are left out: on the `fast` model's validation clips given at
#: 48 kHz they changed 14-18 % and 0-12 % of the answers that HQ and MQ give (BENCHMARKS.md, "Cheaper resampling").
RESAMPLE_QUALITIES = ("VHQ", "HQ", "MQ")
#: Source sample rates emovox accepts (a header claiming 0, 1 or 10**9 Hz is corrupt or hostile).
SOURCE_RATE_RANGE_HZ = (1000, 768_000)
#: Peak level (dBFS) under which a clip counts as silent.
SILENCE_THRESHOLD_DBFS = -60.0

AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc")

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray, "object"]


@dataclass(frozen=True)
class AudioInfo:
    """What the container says about a clip, before decoding it."""

    sample_rate_hz: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate_hz if self.sample_rate_hz else 0.0


def describe_source(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return f"'{name}'"
    return f"<{type(source).__name__}>"


def _read_bytes(source) -> bytes:
    """Return the raw bytes of a path, bytes-like or binary file object."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{describe_source(source)}: no such file")
        if path.is_dir():
            raise AudioError(f"{describe_source(source)}: is a directory, not an audio file")
        try:
            return path.read_bytes()
        except OSError as e:
            raise AudioError(f"{describe_source(source)}: cannot read file ({e.strerror or e})") from e
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read"):
        data = source.read()
        if isinstance(data, str):
            raise AudioError(f"{describe_source(source)}: file object is in text mode; open it with 'rb'")
        return bytes(data)
    raise AudioError(
        f"unsupported audio source of type {type(source).__name__}: "
        "pass a path, bytes, a binary file object, or a NumPy/torch array with its sample rate"
    )


def wav_declared_data_bytes(data: bytes) -> tuple[int, int] | None:
    """For a RIFF/WAVE file: (declared size of the 'data' chunk, bytes actually present after it)."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk_id == b"data":
            if data[:4] == b"RF64" or size == 0xFFFFFFFF:
                return None  # size lives in the ds64 chunk; let libsndfile judge
            return size, len(data) - (pos + 8)
        pos += 8 + size + (size & 1)
    return None


def aiff_declared_frames(data: bytes) -> tuple[int, int, int, int] | None:
    """For AIFF/AIFC: (declared frames, channels, bytes per sample, sound bytes present)."""
    if len(data) < 12 or data[:4] != b"FORM" or data[8:12] not in (b"AIFF", b"AIFC"):
        return None
    pos, frames, channels, width, present = 12, None, None, None, None
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"COMM" and len(body) >= 8:
            channels = int.from_bytes(body[0:2], "big")
            frames = int.from_bytes(body[2:6], "big")
            width = (int.from_bytes(body[6:8], "big") + 7) // 8
        elif cid == b"SSND":
            present = max(0, len(data) - (pos + 8) - 8)  # 8 bytes of offset/blockSize
        pos += 8 + size + (size & 1)
    if None in (frames, channels, width, present):
        return None
    return frames, channels, width, present


def audio_info(source) -> AudioInfo:
    """Read a clip's header only (no decoding). Raises :class:`AudioError` for unreadable input."""
    data = _read_bytes(source)
    return _info_from_bytes(data, describe_source(source))


def decoder_said(e: BaseException) -> str:
    """libsndfile's own message, without soundfile's "Error opening <_io.BytesIO object at 0x...>" prefix
    (the caller names the file or upload itself)."""
    import re

    text = getattr(e, "error_string", None) or str(e)
    return re.sub(r"^Error opening <[^>]*>: ", "", re.sub(r"<[^<>]* object at 0x[0-9a-fA-F]+>", "the data", text))


def _info_from_bytes(data: bytes, desc: str) -> AudioInfo:
    if len(data) == 0:
        raise AudioError(f"{desc}: empty file (0 bytes)")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(
            f"{desc}: not a recognised audio file (supported: WAV, FLAC, Ogg/Vorbis, Opus, MP3, AIFF); "
            f"decoder said: {decoder_said(e)}"
        ) from e
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype)


def _check_truncation(data: bytes, info: AudioInfo, desc: str) -> None:
    wav = wav_declared_data_bytes(data)
    if wav is not None:
        declared, present = wav
        if present < declared:
            raise AudioError(
                f"{desc}: truncated WAV file: header declares {declared} bytes of audio data, "
                f"only {present} are present"
            )
    aiff = aiff_declared_frames(data)
    if aiff is not None:
        frames, channels, width, present = aiff
        if present < frames * channels * width:
            raise AudioError(
                f"{desc}: truncated AIFF file: header declares {frames} frames, "
                f"only {present // max(1, channels * width)} are present"
            )


def _check_header_limits(path, desc: str, max_duration_s: float | None) -> None:
    """A file's header (libsndfile reads only the header) against the limits; unreadable headers are left
    to the full decode, which names the problem."""
    try:
        info = sf.info(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return
    check_source_rate(int(info.samplerate), desc, "header declares a sample rate of")
    if max_duration_s is not None and info.frames / info.samplerate > max_duration_s:
        raise AudioError(f"{desc}: too long: {info.frames / info.samplerate:.1f} s exceeds the maximum of "
                         f"{max_duration_s:g} s")


def check_resample_quality(quality: object, where: str = "") -> str:
    """``quality`` if it is one of :data:`RESAMPLE_QUALITIES`, else a ``ValueError`` naming them."""
    if quality not in RESAMPLE_QUALITIES:
        raise ValueError(f"{where}resample_quality must be one of {', '.join(RESAMPLE_QUALITIES)}, got {quality!r}")
    return str(quality)


def check_source_rate(rate: int, desc: str, what: str) -> None:
    low, high = SOURCE_RATE_RANGE_HZ
    if not low <= rate <= high:
        raise AudioError(f"{desc}: {what} {rate} Hz; emovox reads audio sampled at {low} Hz to {high} Hz")


#: Seconds of audio decoded per read (see :func:`_decode`).
DECODE_BLOCK_S = 20


def _decode(data: bytes, info: AudioInfo, desc: str, sample_rate_hz: int, max_duration_s: float | None,
            resample_quality: str = RESAMPLE_QUALITY) -> np.ndarray:
    """Decode to mono float32 at ``sample_rate_hz``, ``DECODE_BLOCK_S`` at a time, each block mixed down and
    resampled (soxr's stream gives the same samples as one call) as it comes: memory follows the output, never
    what a header claims, and decoding stops within a block of the clip passing ``max_duration_s``. A typical
    clip is one block: libsndfile's per-read overhead (a seek through Python's file callbacks per call) was
    half of a short FLAC clip's decoding time with one-second blocks."""
    sr = info.sample_rate_hz
    limit = None if max_duration_s is None else int(max_duration_s * sr)
    stream = None if sr == sample_rate_hz else soxr.ResampleStream(sr, sample_rate_hz, 1, dtype="float32",
                                                                  quality=resample_quality)
    out, frames, bad = [], 0, 0
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            while len(block := f.read(sr * DECODE_BLOCK_S, dtype="float32", always_2d=True)):
                frames += len(block)
                if limit is not None and frames > limit:
                    raise AudioError(f"{desc}: too long: more than {max_duration_s:g} s of audio (the maximum)")
                mono = to_mono_float(block)
                bad += int(mono.size - np.isfinite(mono).sum())
                if not bad:
                    out.append(mono if stream is None else stream.resample_chunk(mono))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{desc}: truncated or corrupt {info.format} data: {decoder_said(e)}") from e
    if bad:
        raise AudioError(f"{desc}: contains {bad} NaN or infinite sample(s)")
    if info.frames > 0 and frames < info.frames:
        raise AudioError(f"{desc}: truncated {info.format} file: header declares {info.frames} frames, "
                         f"only {frames} could be decoded")
    if stream is not None and frames:
        out.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def to_mono_float(x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return np.ascontiguousarray(x, dtype=np.float32)


def _array_input(source, source_sample_rate_hz, desc) -> tuple[np.ndarray, int]:
    if isinstance(source, tuple) and len(source) == 2:
        source, source_sample_rate_hz = source
    if type(source).__module__.startswith("torch"):
        source = source.detach().cpu().numpy()
    x = np.asarray(source)
    if source_sample_rate_hz is None:
        raise AudioError(
            f"{desc}: an array needs its sample rate: pass source_sample_rate_hz=... or (array, rate)"
        )
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise AudioError(f"{desc}: array of dtype {x.dtype} is not real-valued audio")
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        scale = float(max(abs(info.min), info.max + 1))
        offset = (info.max + 1) / 2 if info.min == 0 else 0.0  # unsigned 8-bit style
        x = (x.astype(np.float64) - offset) / (scale / 2 if info.min == 0 else scale)
    if x.ndim == 2:
        # Accept (samples, channels) or (channels, samples): channels is the short axis.
        if x.shape[0] < x.shape[1] and x.shape[0] <= 8:
            x = x.T
    elif x.ndim != 1:
        raise AudioError(f"{desc}: expected a 1-D (samples) or 2-D (samples, channels) array, got shape {x.shape}")
    return to_mono_float(x), int(source_sample_rate_hz)


def load_audio(
    source,
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    source_sample_rate_hz: int | None = None,
    max_duration_s: float | None = MAX_CLIP_S,
    resample_quality: str = RESAMPLE_QUALITY,
) -> np.ndarray:
    """Decode ``source`` to mono float32 at ``sample_rate_hz`` (resampled by soxr at ``resample_quality``: one of
    :data:`RESAMPLE_QUALITIES`).

    ``source`` is a path, bytes, a binary file object, or an array (NumPy or torch, 1-D or
    ``(samples, channels)``) with ``source_sample_rate_hz`` (or a ``(array, rate)`` tuple).

    Raises :class:`AudioError` (a ``ValueError``) naming the problem: empty, truncated or
    non-audio file, zero samples, NaN/inf samples, longer than ``max_duration_s``.
    Silence is valid: use :func:`is_silent` to ask.
    """
    desc = describe_source(source)
    if sample_rate_hz <= 0:
        raise AudioError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
    check_resample_quality(resample_quality)
    is_array = isinstance(source, np.ndarray) or type(source).__module__.startswith("torch") or (
        isinstance(source, tuple) and len(source) == 2
    )
    if is_array:
        x, sr = _array_input(source, source_sample_rate_hz, desc)
        check_source_rate(sr, desc, "source sample rate")
    else:
        if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
            _check_header_limits(source, desc, max_duration_s)  # before reading a file that may be huge
        data = _read_bytes(source)
        info = _info_from_bytes(data, desc)
        check_source_rate(info.sample_rate_hz, desc, "header declares a sample rate of")
        if max_duration_s is not None and info.duration_s > max_duration_s:
            raise AudioError(
                f"{desc}: too long: {info.duration_s:.1f} s exceeds the maximum of {max_duration_s:g} s"
            )
        _check_truncation(data, info, desc)
        x, sr = _decode(data, info, desc, sample_rate_hz, max_duration_s, resample_quality), sample_rate_hz
    if x.size == 0:
        raise AudioError(f"{desc}: contains zero audio samples")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise AudioError(f"{desc}: contains {bad} NaN or infinite sample(s)")
    if max_duration_s is not None and x.shape[0] / sr > max_duration_s:
        raise AudioError(f"{desc}: too long: {x.shape[0] / sr:.1f} s exceeds the maximum of {max_duration_s:g} s")
    if sr != sample_rate_hz:
        x = soxr.resample(x, sr, sample_rate_hz, quality=resample_quality).astype(np.float32, copy=False)
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > 1.0:
        # Float input beyond full scale (or resampling overshoot): clip into [-1, 1].
        np.clip(x, -1.0, 1.0, out=x)
    return x


def peak_dbfs(x: np.ndarray) -> float:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return -math.inf if peak == 0.0 else 20.0 * math.log10(peak)


def is_silent(x: np.ndarray, *, threshold_dbfs: float = SILENCE_THRESHOLD_DBFS) -> bool:
    """True when the clip's peak level is below ``threshold_dbfs`` (digital silence included)."""
    return peak_dbfs(np.asarray(x)) < threshold_dbfs


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Raw little-endian 16-bit PCM bytes to float32 in [-1, 1) (an odd trailing byte is an error)."""
    if len(data) % 2:
        raise AudioError(f"raw 16-bit PCM must have an even number of bytes, got {len(data)}")
    return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0).copy()


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """All audio files under ``root`` (recursively, following symbolic links; hidden entries skipped), sorted.

    Only regular files count: a FIFO, socket or device named ``x.wav`` would block or never end when
    read, and a dangling link has nothing to read. A link loop is walked once.
    """
    out: list[Path] = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link loop
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(folder) / f for f in files
                if not f.startswith(".") and Path(f).suffix.lower() in AUDIO_EXTENSIONS
                and os.path.isfile(os.path.join(folder, f))]
    return sorted(out)

"""Recordings of any length, decoded block by block: never the whole recording as float32 at once.

A path (or bytes, or a binary file object) is read by libsndfile in blocks; each block is mixed to mono and
resampled with soxr's stream, which gives the samples :func:`emovox.audio.load_audio` gives, so a span cut
from the blocks equals the same span of the whole decoded clip. Each pass over the blocks decodes the file
again (two passes: find the speech, then classify it). Arrays, already in memory, are sliced.

>>> rec = open_recording("meeting.flac")
>>> for block in rec.blocks():    # float32 mono at 16 kHz, ~10 s each
...     ...
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from emovox.audio import (
    aiff_declared_frames,
    check_source_rate,
    decoder_said,
    describe_source,
    load_audio,
    to_mono_float,
    wav_declared_data_bytes,
)
from emovox.errors import AudioError

#: Seconds of source audio decoded per block.
BLOCK_S = 10.0
#: Bytes of a file's start read to compare its header's declared data size with the file's size.
HEADER_BYTES = 1 << 16
_FORMATS = "WAV, FLAC, Ogg/Vorbis, Opus, MP3, AIFF"


@dataclass
class Recording:
    """A recording to decode in blocks at ``sample_rate_hz``: ``source`` is a path or bytes (re-read on each
    pass) or a decoded array (``wave``)."""

    desc: str
    sample_rate_hz: int
    duration_s: float
    source: Any = None
    source_rate_hz: int = 0
    source_frames: int = 0
    wave: np.ndarray | None = None

    def blocks(self, block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
        """Mono float32 blocks at ``sample_rate_hz``, in order; AudioError for NaN/inf or truncated data."""
        if self.wave is not None:
            step = max(1, int(block_s * self.sample_rate_hz))
            for i in range(0, self.wave.size, step):
                yield self.wave[i:i + step]
            return
        yield from _decode_blocks(self, max(1, int(block_s * self.source_rate_hz)))


def open_recording(source, *, sample_rate_hz: int = 16000, source_sample_rate_hz: int | None = None,
                   max_duration_s: float | None = None) -> Recording:
    """Check a recording's header (a path, bytes, a binary file object) or decode an array; AudioError naming
    the problem: missing, empty, not audio, a hostile sample rate, truncated, longer than ``max_duration_s``."""
    desc = describe_source(source)
    if isinstance(source, np.ndarray) or isinstance(source, tuple) or type(source).__module__.startswith("torch"):
        wave = load_audio(source, sample_rate_hz=sample_rate_hz, source_sample_rate_hz=source_sample_rate_hz,
                          max_duration_s=max_duration_s)
        return Recording(desc, sample_rate_hz, wave.size / sample_rate_hz, wave=wave)
    data = _source_data(source, desc)
    try:
        info = sf.info(data if isinstance(data, str) else io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{desc}: not a recognised audio file (supported: {_FORMATS}); decoder said: "
                         f"{decoder_said(e)}") from e
    check_source_rate(int(info.samplerate), desc, "header declares a sample rate of")
    duration = info.frames / info.samplerate
    if max_duration_s is not None and duration > max_duration_s:
        raise AudioError(f"{desc}: too long: {duration:.1f} s exceeds the maximum of {max_duration_s:g} s")
    _check_declared_size(data, desc)
    return Recording(desc, sample_rate_hz, duration, source=data, source_rate_hz=int(info.samplerate),
                     source_frames=int(info.frames))


def _source_data(source, desc: str) -> str | bytes:
    """A path (kept as a path: read in blocks) or the bytes of a bytes-like or file object."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{desc}: no such file")
        if path.is_dir():
            raise AudioError(f"{desc}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(f"{desc}: empty file (0 bytes)")
        return os.fspath(path)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read()
        if isinstance(data, str):
            raise AudioError(f"{desc}: file object is in text mode; open it with 'rb'")
        data = bytes(data)
    else:
        raise AudioError(f"unsupported audio source of type {type(source).__name__}: pass a path, bytes, a binary "
                         "file object, or an array with its sample rate")
    if not data:
        raise AudioError(f"{desc}: empty file (0 bytes)")
    return data


def _check_declared_size(data: str | bytes, desc: str) -> None:
    """A WAV or AIFF header that declares more audio than the file holds: truncated."""
    if isinstance(data, str):
        with open(data, "rb") as f:
            head = f.read(HEADER_BYTES)
        extra = os.path.getsize(data) - len(head)  # bytes after the part read
    else:
        head, extra = data[:HEADER_BYTES], len(data) - min(len(data), HEADER_BYTES)
    wav = wav_declared_data_bytes(head)
    if wav is not None and wav[1] + extra < wav[0]:
        raise AudioError(f"{desc}: truncated WAV file: header declares {wav[0]} bytes of audio data, only "
                         f"{wav[1] + extra} are present")
    aiff = aiff_declared_frames(head)
    if aiff is not None:
        frames, channels, width, present = aiff
        if present + extra < frames * channels * width:
            raise AudioError(f"{desc}: truncated AIFF file: header declares {frames} frames, only "
                             f"{(present + extra) // max(1, channels * width)} are present")


def _decode_blocks(rec: Recording, frames_per_block: int) -> Iterator[np.ndarray]:
    src = rec.source if isinstance(rec.source, str) else io.BytesIO(rec.source)
    same = rec.source_rate_hz == rec.sample_rate_hz
    stream = None if same else soxr.ResampleStream(rec.source_rate_hz, rec.sample_rate_hz, 1, dtype="float32",
                                                   quality="HQ")
    frames = 0
    try:
        with sf.SoundFile(src) as f:
            while len(block := f.read(frames_per_block, dtype="float32", always_2d=True)):
                mono = to_mono_float(block)
                _check_finite(mono, frames, rec)
                frames += len(block)
                out = mono if stream is None else stream.resample_chunk(mono)
                yield np.clip(out, -1.0, 1.0, out=out)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{rec.desc}: truncated or corrupt audio data: {decoder_said(e)}") from e
    if rec.source_frames > 0 and frames < rec.source_frames:
        raise AudioError(f"{rec.desc}: truncated file: header declares {rec.source_frames} frames, only {frames} "
                         "could be decoded")
    if frames == 0:
        raise AudioError(f"{rec.desc}: contains zero audio samples")
    if stream is not None:
        yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


def _check_finite(mono: np.ndarray, offset: int, rec: Recording) -> None:
    bad = ~np.isfinite(mono)
    if bad.any():
        first = (offset + int(np.argmax(bad))) / rec.source_rate_hz
        raise AudioError(f"{rec.desc}: contains {int(bad.sum())} NaN or infinite sample(s) in a block starting "
                         f"at {offset / rec.source_rate_hz:.1f} s (the first at {first:.3f} s)")

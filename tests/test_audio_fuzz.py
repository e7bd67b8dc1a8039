"""Property tests of ``load_audio`` on damaged and hostile files (hypothesis, bounded to stay fast).

The contract: any input either decodes to finite mono float32 in [-1, 1] at 16 kHz, or raises
:class:`AudioError` naming the problem; never another exception, never memory from a header's claim.
The long campaign is ``benchmarks/fuzz.py``; every failure it finds becomes a case here.
"""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emovox.audio import AudioError, load_audio

SR = 16000
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"), "opus": ("OGG", "OPUS"),
           "mp3": ("MP3", "MPEG_LAYER_III"), "aiff": ("AIFF", "PCM_16")}
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def encoded(real_clip) -> dict[str, bytes]:
    x = real_clip[: SR // 4]
    out = {}
    for name, (fmt, subtype) in FORMATS.items():
        buf = io.BytesIO()
        sf.write(buf, x, SR if name != "opus" else 48000, format=fmt, subtype=subtype)
        out[name] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def real_clip(shared_data) -> np.ndarray:
    x, sr = sf.read(shared_data / "ravdess" / "Actor_01" / "03-01-05-01-01-01-01.flac", dtype="float32")
    assert sr == SR
    return x


def check_contract(data: bytes) -> None:
    try:
        y = load_audio(data)
    except AudioError as e:
        assert str(e)  # a message that names the problem
        return
    assert y.dtype == np.float32 and y.ndim == 1 and y.size > 0
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0


@pytest.mark.parametrize("name", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_mutated_files_decode_or_raise_audio_error(encoded, name, data):
    blob = bytearray(encoded[name])
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        i = data.draw(st.integers(0, len(blob) - 1), label="position")
        blob[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    cut = data.draw(st.integers(0, len(blob)), label="truncate at")
    check_contract(bytes(blob[:cut]) if data.draw(st.booleans(), label="truncate") else bytes(blob))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_raise_audio_error(blob):
    check_contract(blob)


def riff_chunks(blob: bytes) -> list[int]:
    """Offsets of every chunk boundary of a RIFF/AIFF file."""
    big = blob[:4] == b"FORM"
    pos, out = 12, [0, 4, 8, 12]
    while pos + 8 <= len(blob):
        size = int.from_bytes(blob[pos + 4 : pos + 8], "big" if big else "little")
        out += [pos + 4, pos + 8, pos + 8 + size]
        pos += 8 + size + (size & 1)
    return out


# libsndfile asks soundfile's in-memory reader to seek before the start of a truncated AIFF; the refusal is
# reported as an "unraisable" warning inside the cffi callback and the decode then fails cleanly (asserted).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("name", ["wav", "aiff"])
def test_truncation_at_every_structural_boundary(encoded, name):
    blob = encoded[name]
    for cut in sorted({c + d for c in riff_chunks(blob) for d in (-1, 0, 1) if 0 <= c + d < len(blob)}):
        with pytest.raises(AudioError):
            load_audio(blob[:cut])


def wav_header(channels: int, rate: int, data_bytes: int, present: int) -> bytes:
    block = max(1, channels) * 2
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_bytes)
    return b"RIFF" + struct.pack("<I", len(body) + present) + body + b"\0" * present


@pytest.mark.parametrize("channels, rate, data_bytes, present, said", [
    (0, SR, 16, 16, "channel count is zero"),
    (65535, SR, 65535 * 8, 65535 * 8, "too many channels"),
    (1, 0, 16, 16, "not a recognised audio file"),
    (1, 1, 3200, 3200, "sample rate of 1 hz"),
    (1, 10**9, 20000, 20000, "sample rate of 1000000000 hz"),
    (1, SR, 0xFFFFFFF0, 16, "truncated wav"),
])
def test_headers_that_lie_are_named(channels, rate, data_bytes, present, said):
    tracemalloc.start()
    try:
        with pytest.raises(AudioError) as e:
            load_audio(wav_header(channels, rate, data_bytes, present))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert said in str(e.value).lower() and peak < 20e6


def test_ten_hour_file_is_refused_from_its_header_without_reading_it(tmp_path):
    path = tmp_path / "ten_hours.wav"
    data_bytes = 10 * 3600 * SR * 2
    with open(path, "wb") as fh:  # a sparse file: a real 10-hour WAV on disk, no disk space used
        fh.write(wav_header(1, SR, data_bytes, 0))
        fh.truncate(fh.tell() + data_bytes)
    tracemalloc.start()
    try:
        with pytest.raises(AudioError, match="too long: 36000.0 s"):
            load_audio(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6


def test_a_tenth_of_a_millisecond_decodes(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, np.full(5, 0.25, np.float32), 48000, subtype="PCM_16")  # 0.1 ms at 48 kHz
    y = load_audio(path)
    assert y.dtype == np.float32 and 1 <= y.size <= 3 and np.isfinite(y).all()


def test_block_decoding_equals_one_shot_resampling(encoded, real_clip):
    import soxr

    buf = io.BytesIO()
    x44 = soxr.resample(real_clip, SR, 44100).astype(np.float32)
    sf.write(buf, np.stack([x44, 0.5 * x44], axis=1), 44100, format="WAV", subtype="FLOAT")
    expected = soxr.resample(x44 * 0.75, 44100, SR, quality="HQ")
    np.testing.assert_allclose(load_audio(buf.getvalue()), np.clip(expected, -1, 1), atol=1e-6)

"""emovox.audio: every supported format decodes, every bad input fails with a message naming it."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from emovox.audio import AudioError, audio_info, find_audio_files, is_silent, load_audio, pcm16_to_float

SR = 16000


def tone(freq=440.0, seconds=1.0, sr=SR, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(x, sr, fmt, subtype):
    b = io.BytesIO()
    sf.write(b, x, sr, format=fmt, subtype=subtype)
    return b.getvalue()


def dominant_hz(x, sr=SR):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


@pytest.mark.parametrize(
    "fmt,subtype,tol",
    [
        ("WAV", "PCM_U8", 1e-2),
        ("WAV", "PCM_16", 1e-4),
        ("WAV", "PCM_24", 1e-6),
        ("WAV", "PCM_32", 1e-6),
        ("WAV", "FLOAT", 1e-7),
        ("WAV", "DOUBLE", 1e-7),
        ("FLAC", "PCM_16", 1e-4),
        ("FLAC", "PCM_24", 1e-6),
        ("AIFF", "PCM_16", 1e-4),
    ],
)
def test_lossless_formats_roundtrip(tmp_path, fmt, subtype, tol):
    x = tone()
    path = tmp_path / f"clip.{fmt.lower()}"
    path.write_bytes(encode(x, SR, fmt, subtype))
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == len(x)
    assert np.abs(y - x).max() < tol


@pytest.mark.parametrize("fmt,subtype,sr", [("OGG", "VORBIS", 16000), ("OGG", "OPUS", 48000),
                                            ("MP3", "MPEG_LAYER_III", 16000)])
def test_lossy_formats_decode_to_the_same_tone(fmt, subtype, sr):
    x = tone(440, 1.0, sr)
    y = load_audio(encode(x, sr, fmt, subtype))  # raw bytes in
    assert abs(len(y) - SR) < 0.05 * SR  # codec priming may add a few ms
    assert abs(dominant_hz(y) - 440) < 5
    assert 0.3 < np.abs(y).max() <= 1.0


def test_aiff_data_behind_a_wav_name_is_decoded_by_content(tmp_path):
    x = tone()
    path = tmp_path / "actually_aiff.wav"
    path.write_bytes(encode(x, SR, "AIFF", "PCM_16"))
    assert audio_info(path).format == "AIFF"
    assert np.abs(load_audio(path) - x).max() < 1e-4


def test_sources_path_bytes_fileobj_and_arrays_agree(tmp_path):
    x = tone(330, 0.5)
    data = encode(x, SR, "WAV", "PCM_16")
    (tmp_path / "a.wav").write_bytes(data)
    ref = load_audio(tmp_path / "a.wav")
    np.testing.assert_array_equal(ref, load_audio(str(tmp_path / "a.wav")))
    np.testing.assert_array_equal(ref, load_audio(data))
    np.testing.assert_array_equal(ref, load_audio(io.BytesIO(data)))
    with open(tmp_path / "a.wav", "rb") as fh:
        np.testing.assert_array_equal(ref, load_audio(fh))
    np.testing.assert_allclose(load_audio(x, source_sample_rate_hz=SR), x)
    np.testing.assert_allclose(load_audio(torch.from_numpy(x), source_sample_rate_hz=SR), x)
    np.testing.assert_allclose(load_audio((x, SR)), x)
    pcm = (x * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm, source_sample_rate_hz=SR), x, atol=1e-4)


def test_stereo_is_mixed_to_mono_and_resampled(tmp_path):
    sr = 44100
    left, right = tone(440, 1.0, sr, 0.4), tone(440, 1.0, sr, 0.2)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="PCM_16")
    y = load_audio(path)
    assert len(y) == SR
    assert abs(dominant_hz(y) - 440) < 2
    assert abs(np.abs(y[1000:-1000]).max() - 0.3) < 0.01  # mean of the two channels
    y8 = load_audio(path, sample_rate_hz=8000)
    assert len(y8) == 8000
    # (channels, samples) arrays are accepted too
    np.testing.assert_allclose(load_audio(np.stack([left, right]), source_sample_rate_hz=sr),
                               load_audio(np.stack([left, right], axis=1), source_sample_rate_hz=sr))


def test_odd_sample_rates_are_resampled():
    for sr in (8000, 11025, 22050, 44100, 48000, 96000):
        y = load_audio(encode(tone(500, 0.5, sr), sr, "WAV", "PCM_16"))
        assert abs(len(y) - SR // 2) <= 1
        assert abs(dominant_hz(y) - 500) < 4


def test_a_cheaper_resampling_quality_gives_nearly_the_same_samples_and_others_are_refused():
    """A model may ask for soxr's MQ (16-bit) instead of HQ: the same length; a tone within 1e-5, full-band noise
    within 0.1 % RMS (the filters' roll-offs near 8 kHz differ), from a file decoded in blocks and from an array;
    LQ and QQ (which changed answers) and typos are refused."""
    rng = np.random.default_rng(0)
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(48000) / 48000)).astype(np.float32)
    noisy = x + (0.05 * rng.standard_normal(48000)).astype(np.float32)
    for signal, rms_tol in ((x, 1e-5), (noisy, 1e-3)):
        for source in (encode(signal, 48000, "WAV", "FLOAT"), (signal, 48000)):
            hq, mq = load_audio(source), load_audio(source, resample_quality="MQ")
            assert len(hq) == len(mq) == 16000
            assert np.sqrt(np.mean((hq - mq) ** 2)) < rms_tol * np.sqrt(np.mean(hq ** 2))
    for bad in ("LQ", "QQ", "hq", None):
        with pytest.raises(ValueError, match="resample_quality must be one of VHQ, HQ, MQ"):
            load_audio((x, 48000), resample_quality=bad)


def test_silence_is_valid_audio_and_detectable():
    y = load_audio(encode(np.zeros(SR, np.float32), SR, "WAV", "PCM_16"))
    assert len(y) == SR and is_silent(y)
    assert not is_silent(tone())
    assert is_silent(tone(amp=1e-4)) and not is_silent(tone(amp=1e-4), threshold_dbfs=-90)


# ------------------------------------------------------------------------------- bad input


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty.wav.*empty file \(0 bytes\)"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match="empty file"):
        load_audio(b"")


def test_not_audio(tmp_path):
    (tmp_path / "notes.wav").write_text("this is a text file, not audio\n" * 20)
    with pytest.raises(AudioError, match=r"notes.wav.*not a recognised audio file.*WAV, FLAC"):
        load_audio(tmp_path / "notes.wav")
    with pytest.raises(AudioError, match="not a recognised audio file") as err:
        load_audio(b"\x89PNG\r\n\x1a\n" + bytes(500))
    assert "object at 0x" not in str(err.value) and "BytesIO" not in str(err.value)  # no internal names


def test_truncated_wav(tmp_path):
    data = encode(tone(), SR, "WAV", "PCM_16")
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"cut.wav.*truncated WAV file: header declares 32000 bytes"):
        load_audio(tmp_path / "cut.wav")


def test_truncated_aiff():
    data = encode(tone(), SR, "AIFF", "PCM_16")
    with pytest.raises(AudioError, match="truncated AIFF file"):
        load_audio(data[: len(data) // 2])


def test_truncated_flac_and_header_only(tmp_path):
    data = encode(tone(seconds=2.0), SR, "FLAC", "PCM_16")
    with pytest.raises(AudioError, match="truncated|corrupt|not a recognised"):
        load_audio(data[: len(data) // 2])
    with pytest.raises(AudioError, match="not a recognised audio file|truncated"):
        load_audio(data[:30])


def test_zero_samples():
    header = encode(np.zeros(0, np.float32), SR, "WAV", "PCM_16")
    with pytest.raises(AudioError, match="contains zero audio samples"):
        load_audio(header)
    with pytest.raises(AudioError, match="contains zero audio samples"):
        load_audio(np.zeros(0, np.float32), source_sample_rate_hz=SR)


def test_nan_and_inf_samples():
    x = tone()
    x[100], x[200] = np.nan, np.inf
    with pytest.raises(AudioError, match=r"contains 2 NaN or infinite sample\(s\)"):
        load_audio(encode(x, SR, "WAV", "FLOAT"))
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(x, source_sample_rate_hz=SR)


def test_too_long():
    data = encode(tone(seconds=3.0), SR, "WAV", "PCM_16")
    with pytest.raises(AudioError, match=r"too long: 3.0 s exceeds the maximum of 2 s"):
        load_audio(data, max_duration_s=2)
    assert len(load_audio(data, max_duration_s=None)) == 3 * SR


def test_array_without_rate_and_bad_types(tmp_path):
    with pytest.raises(AudioError, match="needs its sample rate"):
        load_audio(tone())
    with pytest.raises(AudioError, match="unsupported audio source"):
        load_audio(12345)
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)
    with pytest.raises(AudioError, match="expected a 1-D"):
        load_audio(np.zeros((2, 3, 4), np.float32), source_sample_rate_hz=SR)


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


def test_pcm16_helpers(tmp_path):
    raw = struct.pack("<4h", 0, 16384, -32768, 32767)
    np.testing.assert_allclose(pcm16_to_float(raw), [0, 0.5, -1.0, 32767 / 32768])
    with pytest.raises(AudioError, match="even number of bytes"):
        pcm16_to_float(b"\x00\x01\x02")
    (tmp_path / "sub").mkdir()
    for name in ("a.wav", "sub/b.FLAC", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_audio_files(tmp_path)] == ["a.wav", "b.FLAC"]

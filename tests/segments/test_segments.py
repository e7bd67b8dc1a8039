"""Speech segments (issue 24): the VAD against the official Silero package, the segmenter (offline and
streamed), known utterances found within 0.2 s, no speech, bad inputs, bounded memory, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emovox.audio import AudioError, load_audio
from emovox.cli import main
from emovox.segments import (
    SILERO,
    Segmenter,
    SegmentOptions,
    SileroVad,
    VadError,
    find_speech,
    open_recording,
    silero_onnx_path,
    speech_segments,
)
from emovox.segments.pipeline import cut_spans
from emovox.segments.vad import PackagedVad

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / "ravdess_03-01-05-02-01-01-12.flac", ROOT / "examples" / "crema-d_1012_IEO_HAP_HI.opus"]
SR = 16000


def speech_span(wave: np.ndarray) -> tuple[int, int]:
    """A clean clip's speech by energy (independent of the VAD), as benchmarks/segments.py measures it: first to
    last 10-ms frame above both 30 dB under the loudest and 10 dB over the noise floor."""
    hop = SR // 100
    n = wave.size // hop
    db = 10 * np.log10(np.mean(wave[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) + 1e-20)
    active = np.flatnonzero(db > max(db.max() - 30, max(float(np.percentile(db, 10)), -100.0) + 10))
    return int(active[0] * hop), int((active[-1] + 1) * hop)


def join(clips: list[np.ndarray], pauses_s: list[float], *, noise: float = 0.0, seed: int = 0, trim: bool = False):
    """Clips with pauses before each and after the last; the recording and each clip's speech (seconds).
    ``trim``: each clip cut to its speech first, so that an utterance's ends are exact (speech, then silence)."""
    parts, truth, t = [], [], 0
    for clip, pause in zip(clips, pauses_s):
        if trim:
            clip = clip[slice(*speech_span(clip))]
        parts += [np.zeros(int(pause * SR), np.float32), clip]
        a, b = speech_span(clip) if not trim else (0, clip.size)
        t += int(pause * SR)
        truth.append(((t + a) / SR, (t + b) / SR))
        t += clip.size
    parts.append(np.zeros(int(pauses_s[-1] * SR), np.float32))
    x = np.concatenate(parts)
    if noise:
        x = x + noise * np.random.default_rng(seed).standard_normal(x.size).astype(np.float32)
    return x.astype(np.float32), truth


@pytest.fixture(scope="module")
def examples() -> list[np.ndarray]:
    return [load_audio(p) for p in EXAMPLES]


@pytest.fixture(scope="module")
def model():
    from emovox.inference import load_model

    return load_model()


# ---------------------------------------------------------------------------------------------
# The VAD model and the official package


def test_the_vad_model_is_the_pinned_file():
    import hashlib

    path = silero_onnx_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SILERO.sha256
    with pytest.raises(VadError, match="pip install not-a-vad==1"):
        silero_onnx_path(PackagedVad("not_a_vad_package", "data/x.onnx", "not-a-vad==1", "0" * 64))
    with pytest.raises(VadError, match="sha256 .* is not the pinned"):
        silero_onnx_path(PackagedVad(SILERO.package, SILERO.relpath, SILERO.pip, "0" * 64))


def _official_probs(wave: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    silero_vad = pytest.importorskip("silero_vad")
    m = silero_vad.load_silero_vad(onnx=True)
    m.reset_states()
    out = []
    for i in range(0, wave.size, 512):
        chunk = torch.from_numpy(np.pad(wave[i:i + 512], (0, max(0, i + 512 - wave.size))))
        out.append(m(chunk, SR).item())
    return np.array(out)


def test_probabilities_equal_the_official_onnx_wrapper(examples):
    x, _ = join(examples, [0.7, 1.3, 0.9])
    vad = SileroVad()
    ours = np.concatenate([vad.push(x[:1000]), vad.push(x[1000:30001]), vad.push(x[30001:]), vad.finish()])
    np.testing.assert_allclose(ours, _official_probs(x), atol=1e-6)
    np.testing.assert_allclose(SileroVad().probabilities(x), ours, atol=0)


@pytest.mark.parametrize("opts", [SegmentOptions(), SegmentOptions(min_silence_ms=300, speech_pad_ms=200),
                                  SegmentOptions(max_segment_s=1.5, min_speech_ms=100),
                                  SegmentOptions(threshold=0.3, max_segment_s=None, speech_pad_ms=0),
                                  SegmentOptions(threshold=0.2, neg_threshold=0.15)])
def test_segments_equal_get_speech_timestamps_on_real_clips(examples, opts):
    silero_vad = pytest.importorskip("silero_vad")
    torch = pytest.importorskip("torch")
    x, _ = join(examples + examples[::-1], [0.4, 1.1, 0.3, 2.0, 0.8], noise=0.002)
    ref = silero_vad.get_speech_timestamps(
        torch.from_numpy(x), silero_vad.load_silero_vad(onnx=True), threshold=opts.threshold,
        min_speech_duration_ms=opts.min_speech_ms, min_silence_duration_ms=opts.min_silence_ms,
        speech_pad_ms=opts.speech_pad_ms, max_speech_duration_s=opts.max_segment_s or float("inf"),
        neg_threshold=opts.exit_threshold)
    ours = speech_segments(SileroVad().probabilities(x), x.size, opts)
    assert ours == [(d["start"], d["end"]) for d in ref] and ours


def test_segmenter_streamed_equals_offline_and_the_official_rules():
    from silero_vad.utils_vad import get_speech_timestamps_from_probs as official

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 400))
        probs = np.repeat(rng.random(n // 4 + 1), rng.integers(1, 12))[:n]
        length = n * 512 - int(rng.integers(0, 512))
        opts = SegmentOptions(min_speech_ms=float(rng.choice([0, 250])), min_silence_ms=float(rng.choice([0, 100, 300])),
                              speech_pad_ms=float(rng.choice([0, 30, 200])), max_segment_s=[None, 1.5, 4.0][rng.integers(3)])
        ref = official(list(map(float, probs)), threshold=opts.threshold, min_speech_duration_ms=opts.min_speech_ms,
                       min_silence_duration_ms=opts.min_silence_ms, speech_pad_ms=opts.speech_pad_ms,
                       max_speech_duration_s=opts.max_segment_s or float("inf"), audio_length_samples=length)
        seg, streamed, i = Segmenter(opts), [], 0
        while i < n:
            k = int(rng.integers(1, 30))
            streamed += seg.push(probs[i:i + k])
            i += k
        streamed += seg.finish(length)
        assert streamed == speech_segments(probs, length, opts) == [(d["start"], d["end"]) for d in ref]


def test_long_turns_split_at_the_longest_pause(examples):
    a, b = speech_span(examples[0])
    speech = examples[0][a:b]  # the clip without its second of silence on each side
    x, truth = join([speech, speech, speech], [0.5, 0.35, 0.6, 0.5])
    whole = speech_segments(SileroVad().probabilities(x), x.size, SegmentOptions(min_silence_ms=1500))
    assert len(whole) == 1
    opts = SegmentOptions(min_silence_ms=1500, max_segment_s=(whole[0][1] - whole[0][0]) / SR - 0.5)
    split = speech_segments(SileroVad().probabilities(x), x.size, opts)
    assert len(split) == 2
    cut = split[0][1] / SR  # in the longest pause: between the 2nd and 3rd clips (0.6 s), not mid-clip
    assert truth[1][1] - 0.05 <= cut <= truth[2][0] + 0.05


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        SegmentOptions(threshold=1.5)
    with pytest.raises(ValueError, match="min_silence_ms"):
        SegmentOptions(min_silence_ms=-1)
    with pytest.raises(ValueError, match="max_segment_s"):
        SegmentOptions(max_segment_s=0.01)
    for bad in (0.0, 0.4, float("nan")):  # where a pause starts: above 0, never above where speech starts
        with pytest.raises(ValueError, match="neg_threshold"):
            SegmentOptions(threshold=0.35, neg_threshold=bad)


# ---------------------------------------------------------------------------------------------
# Recordings → classified segments


def test_known_utterances_are_found_within_0_2_s(model, examples, tmp_path):
    x, truth = join([examples[0], examples[1], examples[0]], [1.0, 0.5, 2.0, 1.0], noise=0.001, trim=True)
    path = tmp_path / "three.wav"
    sf.write(path, x, SR, subtype="PCM_16")
    result = model.segments(path)
    assert len(result.segments) == 3, result.segments
    for seg, (a, b) in zip(result.segments, truth):
        assert abs(seg.start_s - a) <= 0.2 and abs(seg.end_s - b) <= 0.2, (seg.start_s, seg.end_s, a, b)
        assert seg.prediction.label in model.labels
    assert result.segments[0].prediction.label == model.predict(EXAMPLES[0]).label  # the angry example
    assert result.message is None and result.records("three.wav")[1]["segment"] == 1


@pytest.mark.realdata
def test_validation_speakers_utterances_are_found_within_0_2_s(model, shared_data, tmp_path):
    """Clips of the default model's validation speakers (RAVDESS actor 11, CREMA-D 1002, nEMO SM0) joined by
    0.3-2 s pauses, each cut to its speech: every segment lies in one clip, and the segments of each clip (one,
    or more where the speaker paused for over 300 ms inside the sentence) span it within 0.2 s."""
    files = (sorted((shared_data / "ravdess" / "Actor_11").glob("*.flac"))[::20][:3]
             + sorted((shared_data / "crema-d").glob("1002_*.opus"))[::15][:3]
             + sorted((shared_data / "nemo").glob("SM0_*.opus"))[::40][:3])
    assert len(files) == 9
    pauses = list(np.random.default_rng(3).uniform(0.3, 2.0, len(files) + 1))
    x, truth = join([load_audio(f) for f in files], pauses, trim=True)
    got = [(s.start_s, s.end_s) for s in model.segments((x, SR)).segments]
    owner = [[k for k, (ta, tb) in enumerate(truth) if a < tb and b > ta] for a, b in got]
    assert all(len(o) == 1 for o in owner), (got, truth)  # no segment in a pause only, none across two clips
    for k, (ta, tb) in enumerate(truth):
        mine = [g for g, o in zip(got, owner) if o == [k]]
        assert mine and abs(mine[0][0] - ta) <= 0.2 and abs(mine[-1][1] - tb) <= 0.2, (mine, ta, tb)
    assert len(got) <= len(truth) + 1


def test_segments_are_the_same_spans_of_the_decoded_recording(examples, tmp_path):
    """Block-wise decoding (44.1 kHz FLAC, resampled in blocks) cuts what load_audio would give."""
    import soxr

    x, _ = join(examples, [0.5, 0.5, 0.5])
    path = tmp_path / "rec.flac"
    sf.write(path, soxr.resample(x, SR, 44100), 44100)
    rec = open_recording(path)
    whole = load_audio(path)
    spans, envelope, n = find_speech(rec, SegmentOptions())
    assert spans and envelope.size == -(-whole.size // 1600) and n == whole.size
    for (a, b), got in zip(spans, cut_spans(rec, spans)):
        np.testing.assert_array_equal(got, whole[a:b])
    # an array with its rate gives the same segments
    assert find_speech(open_recording((whole, SR)), SegmentOptions())[0] == spans


def test_no_speech_gives_no_segments_and_says_so(model, tmp_path, capsys):
    quiet = 0.003 * np.random.default_rng(1).standard_normal(5 * SR).astype(np.float32)
    path = tmp_path / "room.wav"
    sf.write(path, quiet, SR)
    result = model.segments(path)
    assert result.segments == [] and "no speech found in 5.0 s" in result.message
    assert main(["classify", str(path), "--segments", "--format", "jsonl"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "no speech found" in out.err


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"this is not audio at all" * 10), "not a recognised audio file"),
    (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2] * 4000, np.float32), SR, subtype="FLOAT"), "NaN or infinite"),
    (lambda p: p.write_bytes(_wav_bytes()[:-2000]), "truncated WAV"),
])
def test_bad_files_get_clear_errors(model, tmp_path, make, match):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=match):
        model.segments(path)


def _wav_bytes() -> bytes:
    import io

    b = io.BytesIO()
    sf.write(b, np.zeros(SR, np.float32), SR, format="WAV", subtype="PCM_16")
    return b.getvalue()


def test_bad_sources_get_clear_errors(model, tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        model.segments(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="is a directory"):
        model.segments(tmp_path)
    with pytest.raises(AudioError, match="NaN or infinite"):
        model.segments((np.array([0.0, np.inf] * 100, np.float32), SR))
    with pytest.raises(AudioError, match="zero audio samples"):
        model.segments((np.zeros(0, np.float32), SR))
    with pytest.raises(AudioError, match="needs its sample rate"):
        model.segments(np.zeros(100, np.float32))


@pytest.mark.slow
def test_a_long_recording_is_decoded_in_bounded_memory(examples, tmp_path):
    """Ten minutes of 16-bit WAV (38 MB as float32 at 16 kHz, 115 MB at 48 kHz) hold a few MB at a time."""
    minutes, rate = 10, 48000
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(2)
    import soxr

    speech = soxr.resample(np.concatenate([examples[0], np.zeros(SR, np.float32)]), SR, rate)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        for k in range(minutes * 6):  # 10-s blocks: noise, and speech every minute
            block = 0.002 * rng.standard_normal(10 * rate)
            if k % 6 == 0:
                block[: speech.size] += speech
            f.write(block.astype(np.float32))
    tracemalloc.start()
    try:
        spans, _, _ = find_speech(open_recording(path), SegmentOptions())
        pieces = sum(1 for _ in cut_spans(open_recording(path), spans))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(spans) == pieces == minutes
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------
# The command line and the torch-free path


def test_classify_segments_cli_formats_and_plot(examples, tmp_path, capsys):
    x, truth = join(examples, [0.8, 1.2, 0.8])
    path = tmp_path / "two.wav"
    sf.write(path, x, SR)
    assert main(["classify", str(path), "--segments", "--format", "jsonl"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["segment"] for r in recs] == [0, 1] and all(r["path"] == str(path) for r in recs)
    assert {"start", "end", "emotion", "confidence", "scores", "music_mood", "low_confidence"} <= set(recs[0])
    assert abs(recs[1]["start"] - truth[1][0]) <= 0.2
    assert main(["classify", str(path), "--segments", "--format", "csv", "--min-silence-ms", "200"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("path,segment,start,end,emotion") and len(rows) == 3
    plot = tmp_path / "seg.png"
    assert main(["classify", str(path), "--segments", "--format", "table", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert plot.stat().st_size > 1000 and out.count(str(path)) == 2
    assert main(["classify", str(path), "--segments", "--format", "json", "--fields", "start,end,emotion"]) == 0
    assert set(json.loads(capsys.readouterr().out)[0]) == {"start", "end", "emotion"}


def test_classify_segments_cli_refusals(tmp_path, capsys):
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros(SR, np.float32), SR)
    assert main(["classify", str(path), "--segments", "--timeline"]) == 2
    assert "choose one" in capsys.readouterr().err
    assert main(["classify", str(path), "--segments", "--max-segment-s", "0.01"]) == 2
    assert "max_segment_s" in capsys.readouterr().err
    assert main(["classify", str(path), "--segments", "--vad-threshold", "0.2", "--vad-exit-threshold", "0.3"]) == 2
    assert "neg_threshold" in capsys.readouterr().err
    assert main(["classify", str(tmp_path / "nope.wav"), "--segments"]) == 1
    assert "no such file" in capsys.readouterr().out


def test_segments_run_without_torch(tmp_path, examples):
    x, _ = join(examples, [0.5, 0.5, 0.5])
    path = tmp_path / "rec.wav"
    sf.write(path, x, SR)
    script = f"""
import sys, json, contextlib, io
from emovox.cli import main
import emovox
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["classify", {str(path)!r}, "--segments", "--format", "jsonl"]) == 0
r = emovox.load_model().segments({str(path)!r})
print(json.dumps({{"torch": "torch" in sys.modules, "n": len(r.segments), "lines": out.getvalue().count(chr(10))}}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"torch": False, "n": 2, "lines": 2}


def test_timeline_windows_without_speech_are_marked_not_classified(model, examples, tmp_path, capsys):
    x, truth = join([examples[0]], [4.0, 4.0], trim=True)  # 4 s of silence, speech, 4 s of silence
    tl = model.timeline((x, SR), window_s=2.0, hop_s=1.0, speech_only=True)
    for a, b, p in tl.windows:
        overlaps = min(b, truth[0][1]) - max(a, truth[0][0]) > 0.3
        assert (p is not None) == overlaps or 0 < min(b, truth[0][1]) - max(a, truth[0][0]) <= 0.3
    assert tl.windows[0][2] is None and tl.windows[-1][2] is None
    assert tl.to_dict()["windows"][0] == {"start": 0.0, "end": 2.0, "speech": False}
    assert tl.segments[0].emotion is None and any(s.emotion for s in tl.segments)
    assert all(p is not None for _, _, p in model.timeline((x, SR), window_s=2.0, hop_s=1.0).windows)
    path = tmp_path / "t.wav"
    sf.write(path, x, SR)
    assert main(["classify", str(path), "--timeline", "--window-s", "2", "--plot", str(tmp_path / "t.png")]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["segments"][0] == {"start": 0.0, "end": rec["segments"][0]["end"], "speech": False}
    assert main(["classify", str(path), "--timeline", "--window-s", "2", "--all-windows"]) == 0
    assert all("emotion" in w for w in json.loads(capsys.readouterr().out)["windows"])


def test_the_server_returns_the_segment_list(examples):
    pytest.importorskip("fastapi")
    pytest.importorskip("python_multipart")
    pytest.importorskip("httpx")
    import io

    from fastapi.testclient import TestClient

    from emovox.server import Settings, create_app

    x, truth = join(examples, [0.8, 1.2, 0.8], trim=True)
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV")
    quiet = io.BytesIO()
    sf.write(quiet, np.zeros(3 * SR, np.float32), SR, format="WAV")
    with TestClient(create_app(Settings(text_model="none", use_mock_models=False))) as c:
        r = c.post("/predict-segments/?min_silence_ms=200", files={"file": ("rec.wav", buf.getvalue(), "audio/wav")})
        empty = c.post("/predict-segments/", files={"file": ("quiet.wav", quiet.getvalue(), "audio/wav")})
        bad = c.post("/predict-segments/", files={"file": ("bad.wav", b"not audio" * 20, "audio/wav")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["duration"] == pytest.approx(x.size / SR, abs=1e-3)
    assert len(body["segments"]) == 2 and "message" not in body
    for seg, (a, b) in zip(body["segments"], truth):
        assert abs(seg["start"] - a) <= 0.2 and abs(seg["end"] - b) <= 0.2 and seg["emotion"] in seg["scores"]
    assert empty.status_code == 200 and empty.json()["segments"] == [] and "no speech" in empty.json()["message"]
    assert bad.status_code in (400, 415, 422) and "not a recognised audio file" in bad.text


@pytest.mark.ray
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ray_batch_gives_the_local_segment_records(examples, tmp_path, capsys):
    pytest.importorskip("ray", reason="the Ray engine needs its extra: pip install 'emovox[ray]'")
    x, _ = join(examples, [0.8, 1.2, 0.8], trim=True)
    sf.write(tmp_path / "rec.wav", x, SR)
    sf.write(tmp_path / "quiet.wav", np.zeros(2 * SR, np.float32), SR)
    (tmp_path / "bad.wav").write_bytes(b"")
    paths = [str(tmp_path / n) for n in ("rec.wav", "quiet.wav", "bad.wav")]
    assert main(["classify", *paths, "--segments", "--format", "jsonl"]) == 1
    local = capsys.readouterr().out
    assert main(["classify", *paths, "--segments", "--format", "jsonl", "--engine", "ray", "--ray-actors", "1",
                 "--ray-num-cpus", "2"]) == 1
    out = capsys.readouterr()
    got, want = [json.loads(line) for line in out.out.splitlines()], [json.loads(line) for line in local.splitlines()]
    assert [(r["path"], r.get("segment")) for r in got] == [(r["path"], r.get("segment")) for r in want]
    assert len(got) == 3 and "empty file" in got[-1]["error"] and "no speech found" in out.err
    for g, w in zip(got[:2], want[:2]):
        assert (g["start"], g["end"], g["emotion"]) == (w["start"], w["end"], w["emotion"])


def test_streamed_endpointing_equals_the_offline_segments(model, examples, tmp_path, capsys):
    from emovox.segments.live import LiveSegments

    x, _ = join(examples + examples, [0.9, 0.4, 1.7, 0.6, 1.1], noise=0.001)
    offline = model.segments((x, SR))
    live, events, rng = LiveSegments(model), [], np.random.default_rng(4)
    i = 0
    while i < x.size:
        k = int(rng.integers(100, 9000))
        events += live.push(x[i:i + k])
        i += k
    events += live.finish()
    ends = [e for e in events if e["event"] == "speech_end"]
    starts = [e for e in events if e["event"] == "speech_start"]
    assert [(e["start"], e["end"], e["emotion"]) for e in ends] == \
        [(round(s.start_s, 3), round(s.end_s, 3), s.prediction.label) for s in offline.segments]
    assert len(starts) == len(ends) == 4
    for s, e in zip(starts, ends):  # each start reported before its end, as soon as the speech began
        assert events.index(s) < events.index(e) and s["time_s"] - s["start"] < 0.5
        assert e["confidence"] == pytest.approx(
            next(seg.prediction.score for seg in offline.segments if round(seg.start_s, 3) == e["start"]), abs=1e-5)
    path = tmp_path / "s.wav"
    sf.write(path, x, SR)
    assert main(["stream", str(path), "--segments"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [ln["start"] for ln in lines if ln.get("event") == "speech_end"] == [e["start"] for e in ends]
    assert lines[-1]["final"] is True and "event" not in lines[-1]


def test_the_websocket_stream_reports_speech_events(model, examples):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from emovox.server import Settings, create_app

    x, _ = join(examples, [0.8, 1.2, 0.8], trim=True)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    want = model.segments((pcm.astype(np.float32) / 32768.0, SR))
    with TestClient(create_app(Settings(text_model="none", use_mock_models=False))) as c:
        with c.websocket_connect("/stream?segments=true") as ws:
            for i in range(0, pcm.size, 4000):
                ws.send_bytes(pcm[i:i + 4000].tobytes())
            ws.send_text(json.dumps({"event": "end"}))
            got = []
            while not got or not got[-1].get("final"):
                got.append(ws.receive_json())
    ends = [m for m in got if m.get("event") == "speech_end"]
    assert [(e["start"], e["end"], e["emotion"]) for e in ends] == \
        [(round(s.start_s, 3), round(s.end_s, 3), s.prediction.label) for s in want.segments]
    assert sum(m.get("event") == "speech_start" for m in got) == 2 and "emotion" in got[-1]

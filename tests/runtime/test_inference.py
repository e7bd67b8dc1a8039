"""emovox.inference and the classify/stream commands, on tiny model folders built here."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from emovox.audio import AudioError
from emovox.cli import main
from emovox.data.labels import EKMAN7
from emovox.features import preset
from emovox.inference import load_model
from emovox.modelio import ModelLoadError, save_model
from emovox.models import build_model
from emovox.runtime.answers import Prediction, merge_segments, softmax
from emovox.testing import create_model

SR = 16000


def make_model_dir(path, name="cnn", features="logmel64", labels=EKMAN7, temperature=1.0, seed=0):
    return create_model(path, name=name, features=features, labels=labels, temperature=temperature, seed=seed)


def voice(seconds=1.5, f0=180.0, sr=SR, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (0.3 * x / np.abs(x).max() + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("cnn") / "model", temperature=1.5)


@pytest.fixture(scope="module")
def lstm_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("lstm") / "model", name="lstm", features="seed003")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    sf.write(d / "a.wav", voice(1.5, 150), SR)
    sf.write(d / "b.flac", voice(2.5, 220, seed=1), SR)
    stereo = np.stack([voice(1.0, 300, 44100), voice(1.0, 300, 44100, seed=2)], axis=1)
    sf.write(d / "c_stereo_44k.ogg", stereo, 44100, format="OGG", subtype="VORBIS")
    sf.write(d / "d.mp3", voice(1.2, 200, 22050), 22050, format="MP3")
    sf.write(d / "e.opus", voice(1.2, 250, 48000), 48000, format="OGG", subtype="OPUS")
    (d / "sub").mkdir()
    sf.write(d / "sub" / "f.wav", voice(0.8, 120), SR, subtype="PCM_24")
    return d


def test_predict_returns_calibrated_scores_for_every_label(cnn_dir, clips):
    model = load_model(cnn_dir)
    assert model.labels == list(EKMAN7)
    p = model.predict(clips / "a.wav")
    assert isinstance(p, Prediction)
    assert list(p.scores) == list(EKMAN7)
    assert sum(p.scores.values()) == pytest.approx(1.0)
    assert p.label == max(p.scores, key=p.scores.get) and p.score == p.scores[p.label]
    d = p.to_dict()
    assert {"emotion", "confidence", "scores", "music_mood", "low_confidence"} <= set(d)
    assert d["low_confidence"] == (p.score < 0.70)


def test_temperature_scaling_is_applied(cnn_dir, clips, tmp_path):
    hot = load_model(cnn_dir)  # T = 1.5
    cold = load_model(make_model_dir(tmp_path / "t1", temperature=1.0))
    wave = hot.load(clips / "a.wav")
    logits = hot.backend.predict_logits(wave[None])
    np.testing.assert_allclose(hot.probabilities([wave])[0], softmax(logits, 1.5)[0], rtol=1e-6)
    np.testing.assert_allclose(cold.probabilities([wave])[0], softmax(logits, 1.0)[0], rtol=1e-6)
    # a higher temperature flattens the distribution
    assert hot.predict(wave, sample_rate_hz=SR).score < cold.predict(wave, sample_rate_hz=SR).score


def test_sources_agree_path_bytes_array(cnn_dir, clips):
    model = load_model(cnn_dir)
    path = clips / "a.wav"
    a = model.predict(path).scores
    b = model.predict(path.read_bytes()).scores
    wave, sr = sf.read(path, dtype="float32")
    c = model.predict(wave, sample_rate_hz=sr).scores
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6) and a[k] == pytest.approx(c[k], abs=1e-5)


def test_predict_batch_equals_predict_and_reports_bad_clips(cnn_dir, clips, tmp_path):
    model = load_model(cnn_dir)
    files = sorted(p for p in clips.rglob("*") if p.is_file())
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    results = model.predict_batch([*files, bad], errors="return", batch_size=2)
    assert isinstance(results[-1], AudioError) and "broken.wav" in str(results[-1])
    for f, r in zip(files, results):
        single = model.predict(f)
        assert r.label == single.label
        np.testing.assert_allclose(list(r.scores.values()), list(single.scores.values()), atol=1e-5)
    with pytest.raises(AudioError, match="broken.wav"):
        model.predict_batch([bad])


@pytest.mark.parametrize("target", ["basic5", "app6", "core4"])
def test_label_folding_sums_to_one(cnn_dir, clips, target):
    model = load_model(cnn_dir)
    full = model.predict(clips / "b.flac")
    folded = model.predict(clips / "b.flac", labels=target)
    assert sum(folded.scores.values()) == pytest.approx(1.0)
    from emovox.data.labels import fold_scores, taxonomy

    assert list(folded.scores) == list(taxonomy(target))
    for k, v in fold_scores(full.scores, target).items():
        assert folded.scores[k] == pytest.approx(v)


def test_unknown_labels_and_models_fail_clearly(cnn_dir, tmp_path):
    model = load_model(cnn_dir)
    with pytest.raises(ValueError, match="unknown label taxonomy 'nope'"):
        model.predict(np.zeros(SR, np.float32), sample_rate_hz=SR, labels="nope")
    with pytest.raises(ModelLoadError, match="neither a folder nor a shipped model"):
        load_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="missing best_model.pth"):
        load_model(tmp_path / "empty")


def test_corrupt_and_hostile_model_files(cnn_dir, tmp_path):
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(cnn_dir, bad)
    data = (bad / "best_model.pth").read_bytes()
    (bad / "best_model.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(bad)
    (bad / "best_model.pth").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_model(bad)

    class Evil:
        def __reduce__(self):
            return (exec, ("import os; os.environ['EMOVOX_PWNED'] = '1'",))

    torch.save({"format": "emovox-model", "payload": Evil()}, bad / "best_model.pth")
    with pytest.raises(ModelLoadError, match="refuses to unpickle"):
        load_model(bad)
    import os

    assert "EMOVOX_PWNED" not in os.environ
    torch.save({"format": "emovox-model", "format_version": 1, "config": {"features": {}, "labels": ["a"],
                "model": {"name": "cnn", "kwargs": {}}}, "state_dict": {}}, bad / "best_model.pth")
    with pytest.raises(ModelLoadError, match="invalid model config|do not match"):
        load_model(bad)


def test_model_folders_that_lie_are_refused_before_anything_is_built(cnn_dir, tmp_path):
    import os
    import shutil
    import tracemalloc

    def damaged(name, change):
        d = tmp_path / name
        shutil.copytree(cnn_dir, d)
        ck = torch.load(d / "best_model.pth", weights_only=True)
        change(ck)
        torch.save(ck, d / "best_model.pth")
        return d

    def nan(ck):
        key = next(iter(ck["state_dict"]))
        ck["state_dict"][key] = torch.full_like(ck["state_dict"][key], float("nan"))

    with pytest.raises(ModelLoadError, match="holds NaN or infinite values"):
        load_model(damaged("nan", nan))
    fewer = damaged("labels", lambda ck: ck["config"].update(labels=ck["config"]["labels"][:2]))
    with pytest.raises(ModelLoadError, match="do not match the model config: .* in the file"):
        load_model(fewer)
    huge = damaged("huge", lambda ck: ck["config"]["model"]["kwargs"].update(channels=[100_000, 100_000, 100_000]))
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError, match="do not match the model config"):
            load_model(huge)  # the config claims ~10^11 parameters: nothing of that size is allocated
        assert tracemalloc.get_traced_memory()[1] < 200e6
    finally:
        tracemalloc.stop()
    outside = tmp_path / "outside"
    shutil.copytree(cnn_dir, outside)
    linked = tmp_path / "linked"
    shutil.copytree(cnn_dir, linked)
    os.remove(linked / "best_model.pth")
    os.symlink(outside / "best_model.pth", linked / "best_model.pth")
    with pytest.raises(ModelLoadError, match="outside the model folder"):
        load_model(linked)


def test_silent_clip_is_classified_and_flagged(cnn_dir):
    p = load_model(cnn_dir).predict(np.zeros(SR, np.float32), sample_rate_hz=SR)
    assert p.silent and p.to_dict()["silent"] is True
    assert sum(p.scores.values()) == pytest.approx(1.0)


def test_timeline_segments_tile_the_recording(cnn_dir, tmp_path):
    model = load_model(cnn_dir)
    long = np.concatenate([voice(4, 120), np.zeros(3 * SR, np.float32), voice(4, 300, seed=3)])
    tl = model.timeline(long, sample_rate_hz=SR, window_s=2.0, hop_s=0.5)
    assert tl.duration_s == pytest.approx(11.0)
    starts = [w[0] for w in tl.windows]
    assert starts[0] == 0 and tl.windows[-1][1] == pytest.approx(11.0)
    assert all(b - a == pytest.approx(2.0) for a, b, _ in tl.windows)
    segs = tl.segments
    assert segs[0].start_s == 0 and segs[-1].end_s == pytest.approx(11.0)
    for s1, s2 in zip(segs, segs[1:]):
        assert s1.end_s == pytest.approx(s2.start_s) and s1.emotion != s2.emotion
    out = tl.plot(tmp_path / "tl.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    short = model.timeline(voice(1.0), sample_rate_hz=SR, window_s=3.0)
    assert len(short.windows) == 1 and short.segments[0].end_s == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must be positive"):
        model.timeline(long, sample_rate_hz=SR, hop_s=0)


def test_merge_segments_by_hand():
    def P(label):
        return Prediction(label, 0.8, {label: 0.8})

    wins = [(0, 2, P("sad")), (1, 3, P("sad")), (2, 4, P("happy")), (3, 5, P("sad"))]
    segs = merge_segments(wins, 5.0)
    assert [(s.start_s, s.end_s, s.emotion) for s in segs] == [(0, 2.5, "sad"), (2.5, 3.5, "happy"), (3.5, 5.0, "sad")]


def test_streaming_lstm_equals_offline(lstm_dir, clips):
    model = load_model(lstm_dir)
    assert model.streaming
    wave = model.load(clips / "b.flac")
    offline = model.predict(wave, sample_rate_hz=SR)
    session = model.stream()
    updates = []
    rng = np.random.default_rng(0)
    pos = 0
    while pos < len(wave):  # irregular chunk sizes, some shorter than a frame
        n = int(rng.integers(50, 3000))
        updates += session.push(wave[pos : pos + n])
        pos += n
    final = session.finish()
    assert len(updates) > 10
    assert final["frames"] == updates[-1]["frames"] > 200
    np.testing.assert_allclose(final["confidence"], list(offline.scores.values()), atol=1e-5)
    assert final["class"] == EKMAN7.index(offline.label) and final["emotion"] == offline.label
    assert isinstance(final["confidence"], list) and len(final["confidence"]) == 7  # seed 003 shape


def test_streaming_window_model_final_equals_offline(cnn_dir, clips):
    model = load_model(cnn_dir)
    wave = model.load(clips / "b.flac")
    session = model.stream(window_s=1.0)
    ups = [u for i in range(0, len(wave), 4000) for u in session.push(wave[i : i + 4000])]
    assert len(ups) == -(-len(wave) // 4000)
    final = session.finish()
    np.testing.assert_allclose(final["confidence"], list(model.predict(wave, sample_rate_hz=SR).scores.values()),
                               atol=1e-5)
    with pytest.raises(AudioError, match="NaN"):
        session.push(np.array([np.nan], np.float32))


def test_every_chunk_is_answered_all_zero_and_shorter_than_a_frame_included(lstm_dir, cnn_dir, clips):
    """A client that waits for a reply after each chunk never hangs: all-zero chunks and chunks
    shorter than one frame get an update too (flagged silent while everything so far is silent),
    and every update is the offline answer for the audio received so far."""
    wave = load_model(lstm_dir).load(clips / "a.wav")
    for d in (lstm_dir, cnn_dir):
        model = load_model(d)
        session = model.stream(window_s=1.0)
        pushed = []
        for chunk in (np.zeros(100, np.float32), np.zeros(SR, np.float32), wave[:150], wave[150:8000]):
            ups = session.push(chunk)
            pushed.append(chunk)
            assert len(ups) == 1, (d.name, len(chunk))
            so_far = np.concatenate(pushed)
            offline = model.predict(so_far[-SR:] if d == cnn_dir else so_far, sample_rate_hz=SR)
            np.testing.assert_allclose(ups[0]["confidence"], list(offline.scores.values()), atol=1e-5)
            assert ups[0].get("silent", False) is offline.silent is (len(pushed) <= 2), (d.name, len(pushed))
        assert session.push(np.zeros(0, np.float32))[0]["time_s"] == pytest.approx(so_far.size / SR, abs=1e-3)
    fresh = load_model(lstm_dir).stream()
    assert fresh.push(np.zeros(0, np.float32)) == [] and fresh.finish() is None
    fresh.push(np.zeros(SR, np.float32))
    assert fresh.finish()["silent"] is True and fresh.finish()["frames"] == 0


def test_stream_updates_follow_the_requested_label_order(lstm_dir, clips):
    """labels=app6: class and confidence are in app6's order (seed 003's front-end ids), as scores are."""
    from emovox.data.labels import APP6

    model = load_model(lstm_dir)
    wave = model.load(clips / "b.flac")
    session = model.stream(labels="app6")
    ups = [u for i in range(0, len(wave), 4000) for u in session.push(wave[i : i + 4000])]
    final = session.finish()
    offline = model.predict(wave, sample_rate_hz=SR, labels="app6")
    for u in (*ups, final):
        assert list(u["scores"]) == list(APP6) and len(u["confidence"]) == 6
        assert u["class"] == APP6.index(u["emotion"]) and u["confidence"] == list(u["scores"].values())
    np.testing.assert_allclose(final["confidence"], list(offline.scores.values()), atol=1e-5)
    assert final["class"] == APP6.index(offline.label)
    with pytest.raises(ValueError, match="unknown label taxonomy 'klingon'"):
        model.stream(labels="klingon")


def test_final_answer_mean_averages_every_frame(lstm_dir, cnn_dir, clips):
    """final_answer='mean' (seed 003's commented option): the mean of every frame's probabilities,
    chunking notwithstanding; 'last' is the offline answer."""
    model = load_model(lstm_dir)
    pipe = model.backend.pipeline
    wave = model.load(clips / "b.flac")
    with torch.no_grad():
        feats, _ = pipe.features(torch.from_numpy(wave)[None])
        frames = softmax(pipe.model.frame_logits(feats.transpose(1, 2))[0].numpy(), pipe.temperature.item())
    finals = {}
    for answer in ("last", "mean"):
        session = model.stream(final_answer=answer)
        for i in range(0, len(wave), 1234):
            session.push(wave[i : i + 1234])
        finals[answer] = session.finish()["confidence"]
    np.testing.assert_allclose(finals["mean"], frames.mean(0), atol=1e-5)
    np.testing.assert_allclose(finals["last"], list(model.predict(wave, sample_rate_hz=SR).scores.values()), atol=1e-5)
    assert np.abs(np.subtract(finals["mean"], finals["last"])).max() > 1e-4  # (a random model: near uniform)
    with pytest.raises(ValueError, match="final_answer='mean' averages .* classifies windows"):
        load_model(cnn_dir).stream(final_answer="mean")
    with pytest.raises(ValueError, match="final_answer must be one of last, mean"):
        model.stream(final_answer="first")


def test_streaming_seed003_backend_features_equal_offline_as_the_peak_grows(tmp_path, clips):
    """framewise-librosa-mfcc13 divides the clip by its peak: a stream whose peak keeps growing is run
    again from the start when it does, so every update is still the offline answer so far."""
    folder = make_model_dir(tmp_path / "m", name="lstm", features="framewise-librosa-mfcc13", temperature=0.1)
    payload = torch.load(folder / "best_model.pth", weights_only=True)
    for name, value in payload["state_dict"].items():  # a long memory (forget gates open): every frame counts
        if name.startswith("lstm.bias_hh"):
            value[value.shape[0] // 4 : value.shape[0] // 2] = 4.0
    torch.save(payload, folder / "best_model.pth")
    model = load_model(folder)
    wave = model.load(clips / "b.flac")
    wave = (wave * np.linspace(0.05, 1.0, len(wave))).astype(np.float32)  # louder and louder
    session = model.stream()
    rng = np.random.default_rng(1)
    pos, checked = 0, 0
    while pos < len(wave):
        n = int(rng.integers(100, 6000))
        (u,) = session.push(wave[pos : pos + n])
        pos += n
        if checked < 4 and pos > 2000 and pos < len(wave):
            np.testing.assert_allclose(u["confidence"], list(model.predict(wave[:pos], sample_rate_hz=SR).scores.values()),
                                       atol=1e-5)
            checked += 1
    final = session.finish()
    np.testing.assert_allclose(final["confidence"], list(model.predict(wave, sample_rate_hz=SR).scores.values()),
                               atol=1e-5)
    assert checked == 4 and final["frames"] > 200


# ------------------------------------------------------------------------------------------ CLI


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_classify_cli_json_for_one_file(cnn_dir, clips, capsys):
    code, out, _ = run_cli(["classify", str(clips / "a.wav"), "--model", str(cnn_dir)], capsys)
    assert code == 0
    rec = json.loads(out)
    assert rec["path"].endswith("a.wav") and rec["emotion"] in EKMAN7
    assert {"emotion", "confidence"} <= set(rec)  # seed 001's JSON is a subset
    assert set(rec["scores"]) == set(EKMAN7) and "music_mood" in rec and "low_confidence" in rec
    # seed 001's classify_audio.py prints exactly {"emotion": ..., "confidence": ...}
    code, out, _ = run_cli(["classify", str(clips / "a.wav"), "--model", str(cnn_dir), "--fields",
                            "emotion,confidence"], capsys)
    assert code == 0 and json.loads(out) == {"emotion": rec["emotion"], "confidence": rec["confidence"]}
    code, _, err = run_cli(["classify", str(clips / "a.wav"), "--model", str(cnn_dir), "--fields", "mood"], capsys)
    assert code == 2 and "unknown field(s) mood" in err and "music_mood" in err


def test_classify_cli_folders_globs_formats_and_failures(cnn_dir, clips, tmp_path, capsys):
    code, out, err = run_cli(["classify", str(clips), "--model", str(cnn_dir), "--format", "jsonl"], capsys)
    recs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(recs) == 6, err  # recursive, every format
    code, out, _ = run_cli(["classify", str(clips / "*.wav"), str(clips / "sub" / "*.wav"), "--model", str(cnn_dir),
                            "--format", "csv", "--labels", "basic5"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].split(",")[:5] == ["path", "emotion", "confidence", "music_mood", "low_confidence"]
    assert lines[0].split(",")[5:10] == ["happy", "sad", "angry", "surprised", "neutral"]
    (tmp_path / "bad.wav").write_bytes(b"")
    code, out, err = run_cli(["classify", str(clips / "a.wav"), str(tmp_path / "bad.wav"), str(tmp_path / "none.flac"),
                              "--model", str(cnn_dir), "--top-k", "2"], capsys)
    recs = json.loads(out)
    assert code == 1 and "2 of 3 file(s) could not be classified" in err
    assert len(recs[0]["scores"]) == 2
    assert "empty file" in recs[1]["error"] and "no such file" in recs[2]["error"]
    code, out, _ = run_cli(["classify", str(clips / "a.wav"), "--model", str(cnn_dir), "--format", "table",
                            "--threshold", "0.01"], capsys)
    assert code == 0 and "a.wav" in out and "low confidence" not in out


def test_classify_cli_timeline_and_plot(cnn_dir, tmp_path, capsys):
    sf.write(tmp_path / "long.wav", np.concatenate([voice(3, 130), voice(3, 320, seed=5)]), SR)
    code, out, _ = run_cli(["classify", str(tmp_path / "long.wav"), "--model", str(cnn_dir), "--timeline",
                            "--window-s", "2", "--hop-s", "1", "--plot", str(tmp_path / "tl.png")], capsys)
    rec = json.loads(out)
    assert code == 0 and rec["duration"] == pytest.approx(6.0) and rec["segments"]
    assert rec["segments"][0]["start"] == 0 and rec["segments"][-1]["end"] == pytest.approx(6.0)
    assert (tmp_path / "tl.png").stat().st_size > 1000


def test_classify_cli_bad_model_and_labels(cnn_dir, clips, capsys):
    code, _, err = run_cli(["classify", str(clips / "a.wav"), "--model", "/nonexistent/model"], capsys)
    assert code == 2 and "neither a folder nor a shipped model" in err
    code, _, err = run_cli(["classify", str(clips / "a.wav"), "--model", str(cnn_dir), "--labels", "klingon"], capsys)
    assert code == 2 and "unknown label taxonomy 'klingon'" in err


def test_stream_cli_file_and_stdin(lstm_dir, clips, capsys):
    code, out, _ = run_cli(["stream", str(clips / "a.wav"), "--model", str(lstm_dir), "--chunk-ms", "100"], capsys)
    ups = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(ups) >= 10 and ups[-1]["final"] is True
    assert isinstance(ups[-1]["class"], int) and len(ups[-1]["confidence"]) == 7
    offline = load_model(lstm_dir).predict(clips / "a.wav")
    np.testing.assert_allclose(ups[-1]["confidence"], list(offline.scores.values()), atol=1e-5)
    # raw 16-bit PCM on stdin, in a real subprocess
    pcm = (np.clip(voice(1.0), -1, 1) * 32767).astype("<i2").tobytes()
    proc = subprocess.run([sys.executable, "-m", "emovox.cli", "stream", "-", "--model", str(lstm_dir)],
                          input=pcm, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert lines[-1]["final"] and lines[-1]["time_s"] == pytest.approx(1.0)
    buf = io.BytesIO()
    sf.write(buf, (np.frombuffer(pcm, "<i2") / 32768).astype(np.float32), SR, format="WAV", subtype="PCM_16")
    ref = load_model(lstm_dir).predict(buf.getvalue())
    np.testing.assert_allclose(lines[-1]["confidence"], list(ref.scores.values()), atol=1e-5)


def test_stream_cli_answers_a_second_of_zeros_with_the_shipped_lstm(monkeypatch, capsys):
    """`emovox stream - --model streaming` on a second of digital silence: one silent update per
    250 ms chunk, then the final one (seed 003's front-end order with --labels app6)."""
    from emovox.data.labels import APP6

    pcm = np.zeros(SR, "<i2").tobytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(pcm)))
    code, out, err = run_cli(["stream", "-", "--model", "streaming", "--labels", "app6", "--final-answer", "mean"],
                             capsys)
    ups = [json.loads(line) for line in out.splitlines()]
    assert code == 0, err
    assert len(ups) == 5 and [u["final"] for u in ups] == [False] * 4 + [True]
    assert all(u["silent"] is True and u["frames"] == 0 and len(u["confidence"]) == 6 for u in ups)
    assert all(u["class"] == APP6.index(u["emotion"]) for u in ups)
    silence = load_model("streaming").predict(np.zeros(SR, np.float32), sample_rate_hz=SR, labels="app6")
    np.testing.assert_allclose(ups[-1]["confidence"], list(silence.scores.values()), atol=1e-5)


def test_batching_never_changes_results_for_any_front_end(cnn_dir, lstm_dir):
    """Clips of different lengths zero-padded into one batch give the same scores as alone."""
    waves = [voice(0.6 + 0.37 * i, 140 + 25 * i, seed=i) for i in range(5)]
    for d in (cnn_dir, lstm_dir):
        model = load_model(d)
        together = model.probabilities(waves)
        alone = np.stack([model.probabilities([w])[0] for w in waves])
        np.testing.assert_allclose(together, alone, atol=1e-6)


def test_level_normalised_model_ignores_recording_gain(tmp_path):
    """With ``level_db`` in its front-end, a clip 26 dB quieter (or 12 dB louder, in float) gets the
    same scores, alone or zero-padded in a batch with clips of other lengths."""
    d = make_model_dir(tmp_path / "crnn", name="crnn", features="logmel128l")
    model = load_model(d)
    waves = [voice(0.8 + 0.45 * i, 150 + 20 * i, seed=i) for i in range(4)]
    base = model.probabilities(waves)
    for gain in (0.05, 4.0):
        np.testing.assert_allclose(model.probabilities([w * gain for w in waves]), base, atol=1e-5)
    np.testing.assert_allclose(base, np.stack([model.probabilities([w])[0] for w in waves]), atol=1e-6)
    # the same model without level normalisation does depend on the gain (what the option is for)
    plain = load_model(make_model_dir(tmp_path / "plain", name="crnn", features="logmel128"))
    assert np.abs(plain.probabilities([w * 0.05 for w in waves]) - plain.probabilities(waves)).max() > 1e-3


def test_streaming_model_refuses_level_normalisation(tmp_path):
    from emovox.modelio import load_model_dir

    d = make_model_dir(tmp_path / "lstm", name="lstm", features="seed003")
    cfg = json.loads((d / "model_config.json").read_text())
    cfg["features"] = preset("logmel128l").to_dict()
    cfg["model"]["kwargs"], cfg["normalization"] = {}, None
    save_model(d, build_model("lstm", n_features=128, n_classes=len(EKMAN7)).eval(), cfg)
    with pytest.raises((ModelLoadError, ValueError), match="level_db.*streaming|streaming.*level_db"):
        load_model_dir(d)


# ------------------------------------------------------------------------------ shipped model

EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples"


def test_shipped_default_model_loads_from_package_data_and_answers():
    from emovox.inference import available_models

    shipped = {m["name"]: m for m in available_models()}
    assert "default" in shipped and shipped["default"]["labels"] == list(EKMAN7)
    assert shipped["default"]["model"] == "ssl"  # a head on the packaged Whisper-base encoder
    model = load_model()  # no argument: the default, through importlib.resources
    assert model.name == "default" and model.labels == list(EKMAN7)
    backbone = json.loads((model.path / "model_config.json").read_text())["model"]["kwargs"]["backbone"]
    assert backbone["source"] == "whisper-base" and backbone["kind"] == "package"  # installed, offline
    assert (model.path / "MODEL_CARD.md").read_text().count("non-commercial") >= 1
    p = model.predict(EXAMPLES / "ravdess_03-01-05-02-01-01-12.flac")  # an angry clip (training speaker)
    assert sum(p.scores.values()) == pytest.approx(1.0)
    assert p.label == "angry" or "angry" in dict(p.top_k(2))
    q = model.predict(EXAMPLES / "crema-d_1012_IEO_HAP_HI.opus")  # Opus, another corpus
    assert q.scores != p.scores and sum(q.scores.values()) == pytest.approx(1.0)


def test_shipped_crnn_is_kept_under_its_own_name():
    from emovox.inference import available_models

    shipped = {m["name"]: m for m in available_models()}
    assert shipped["crnn"]["model"] == "crnn" and shipped["crnn"]["labels"] == list(EKMAN7)
    p = load_model("crnn").predict(EXAMPLES / "ravdess_03-01-05-02-01-01-12.flac")
    assert p.label == "angry" or "angry" in dict(p.top_k(2))


def test_readme_main_job_prints_the_json_record(capsys):
    code = main(["classify", str(EXAMPLES / "ravdess_03-01-05-02-01-01-12.flac"), "--format", "json"])
    rec = json.loads(capsys.readouterr().out)
    assert code == 0 and rec["emotion"] in EKMAN7 and 0 < rec["confidence"] <= 1
    assert rec["music_mood"] and isinstance(rec["low_confidence"], bool)


def test_shipped_streaming_lstm_streams_like_it_classifies(capsys):
    """`emovox stream --model streaming` runs the shipped LSTM frame by frame; fed chunk by chunk it
    ends where the whole clip does."""
    from emovox.inference import available_models

    shipped = {m["name"]: m for m in available_models()}
    assert shipped["streaming"]["model"] == "lstm" and shipped["streaming"]["labels"] == list(EKMAN7)
    clip = EXAMPLES / "ravdess_03-01-05-02-01-01-12.flac"
    code, out, _ = run_cli(["stream", str(clip), "--model", "streaming", "--chunk-ms", "250"], capsys)
    ups = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and ups[-1]["final"] is True and len(ups) >= 10
    model = load_model("streaming")
    assert model.streaming
    whole = model.predict(clip)
    np.testing.assert_allclose(ups[-1]["confidence"], list(whole.scores.values()), atol=1e-5)
    assert ups[-1]["emotion"] == whole.label and ups[-1]["class"] == EKMAN7.index(whole.label)
    # every update carries the answer so far: a distribution over the seven labels
    assert all(abs(sum(u["confidence"]) - 1) < 1e-4 for u in ups)


@pytest.mark.parametrize("family", ["cnn", "cnn2d", "crnn"])
def test_inference_fuses_batch_norm_without_changing_results(family, tmp_path):
    """EmotionModel folds eval-mode batch norms into their convolutions and runs 2-D convolutions
    channels-last: same scores as the saved (unfused, NCHW) pipeline, padded or alone."""
    from emovox.modelio import load_model_dir
    from emovox.models.common import fuse_conv_bn

    d = make_model_dir(tmp_path / family, name=family)
    loaded = load_model_dir(d)
    for m in loaded.pipeline.modules():  # trained-looking batch-norm statistics, not the identity
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    waves = [voice(0.7 + 0.4 * i, 150 + 30 * i, seed=i) for i in range(4)]
    n = max(len(w) for w in waves)
    x = torch.from_numpy(np.stack([np.pad(w, (0, n - len(w))) for w in waves]))
    lengths = torch.tensor([len(w) for w in waves])
    def n_bn():
        return sum(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in loaded.pipeline.modules())

    with torch.no_grad():
        before, bn_before = loaded.pipeline(x, lengths), n_bn()
        fused = fuse_conv_bn(loaded.pipeline)
        after = loaded.pipeline(x, lengths)
    assert fused == {"cnn": 3, "cnn2d": 3, "crnn": 4}[family] and n_bn() == bn_before - fused
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    model = load_model(d)  # the inference path fuses on load and stays padding-safe
    convs2d = [m for m in model.backend.pipeline.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs2d)
    probs = model.probabilities(waves)
    with torch.no_grad():  # a fresh load of the saved file: unfused, NCHW
        reference = torch.softmax(load_model_dir(d).pipeline.eval()(x, lengths) / model.backend.temperature, -1)
    np.testing.assert_allclose(probs, reference.numpy(), atol=1e-5)
    np.testing.assert_allclose(probs, np.stack([model.probabilities([w])[0] for w in waves]), atol=1e-6)

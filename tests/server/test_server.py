"""The HTTP service (emovox.server): every endpoint, every error status, auth, CORS, mock mode,
the WebSocket stream, start-up refusal, and one real uvicorn process (limits enforced on the wire).

Models are tiny random ones built here; clips are generated. The browser test is in
test_server_browser.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import select
import socket
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from emovox.testing import create_model

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from emovox.cli import main  # noqa: E402
from emovox.data.labels import BASIC5, EKMAN7, GOEMOTIONS28, MUSIC_MOODS, RAVDESS8  # noqa: E402
from emovox.features import FeatureStats, preset  # noqa: E402
from emovox.inference import load_model  # noqa: E402
from emovox.modelio import ModelLoadError, make_config, save_model  # noqa: E402
from emovox.models import build_model  # noqa: E402
from emovox.server import Settings, create_app  # noqa: E402
from emovox.server.process import server_process  # noqa: E402

SR = 16000
MAX_UPLOAD_MB = 1.0
MAX_DURATION_S = 10.0


# -- helpers (also used by test_server_browser.py) ------------------------------------------------

def make_model_dir(path, labels=EKMAN7, seed=0):
    """A tiny random CNN model folder (log-mel 64, labels in ``labels`` order)."""
    return create_model(path, labels=labels, temperature=0.3, seed=seed)


def voice(seconds=3.0, f0=180.0, seed=0):
    """A voiced, vibrato-modulated harmonic tone with a little noise (not silence, not a pure sine)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f = f0 * (1 + 0.3 * np.sin(2 * np.pi * 0.25 * t)) * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * x / np.abs(x).max() + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def wav_bytes(x, sr=SR, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def _multipart(field, data, filename="clip.wav"):
    return {"files": {field: (filename, data, "audio/wav")}}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("server") / "tiny-cnn")


@pytest.fixture(scope="module")
def clip():
    return wav_bytes(voice(3.0))


@pytest.fixture(scope="module")
def long_clip():
    x = np.concatenate([voice(3.0, 120, seed=1), voice(3.0, 300, seed=2), 0.1 * voice(2.5, 200, seed=3)])
    return wav_bytes(x)


def settings_for(model_dir, **kw):
    kw.setdefault("text_model", "none")
    return Settings(model=str(model_dir), max_upload_mb=MAX_UPLOAD_MB, max_duration_s=MAX_DURATION_S,
                    max_concurrency=2, **kw)


@pytest.fixture(scope="module")
def client(model_dir):
    with TestClient(create_app(settings_for(model_dir))) as c:
        yield c


@pytest.fixture(scope="module")
def reference(model_dir):
    """The library's own answers, to compare the service with."""
    return load_model(model_dir, threshold=0.70)


def assert_error(r, status, *words):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "error" and isinstance(body["error"], str) and body["error"]
    assert "detail" in body
    for w in words:
        assert w.lower() in body["error"].lower(), body["error"]
    return body


# -- endpoints --------------------------------------------------------------------------------

def test_health_names_models_labels_text_and_links(client, model_dir):
    h = client.get("/").json()
    assert h["status"] == "ok" and h["mock"] is False
    audio = h["models"]["audio"]
    assert audio["name"] == model_dir.name and audio["kind"] == "cnn" and len(audio["version"]) == 12
    assert audio["labels"] == list(EKMAN7) == h["labels"]
    assert h["text_available"] is False and h["models"]["text"]["available"] is False
    assert "TEXT_MODEL_DIR" in h["models"]["text"]["reason"]
    assert h["links"] == {"ui": "/ui", "docs": "/docs", "openapi": "/openapi.json"}
    assert h["limits"] == {"max_upload_mb": MAX_UPLOAD_MB, "max_duration_s": MAX_DURATION_S,
                           "confidence_threshold": 0.70}
    assert h["auth"]["required"] is False


def test_predict_emotion_is_seed002_schema_and_equals_the_library(client, reference, clip):
    r = client.post("/predict-emotion/", **_multipart("file", clip))
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"emotion", "confidence", "music_mood", "all_probabilities", "status", "low_confidence"} <= set(body)
    assert "mock" not in body
    assert body["status"] == "success"
    assert list(body["all_probabilities"]) == list(EKMAN7)
    assert sum(body["all_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    p = reference.predict(clip)
    assert body["emotion"] == p.label and body["confidence"] == pytest.approx(p.score, abs=1e-6)
    assert body["all_probabilities"] == pytest.approx(p.scores, abs=1e-6)
    bare = client.post("/predict-emotion", **_multipart("file", clip))  # no trailing slash: same answer, no 307
    assert bare.status_code == 200 and bare.json() == body
    assert body["music_mood"] == MUSIC_MOODS[p.label]
    assert body["low_confidence"] is (p.score < 0.70) and body["threshold"] == 0.70
    assert body["duration_s"] == pytest.approx(3.0)


def test_labels_query_folds_the_output(client, reference, clip):
    body = client.post("/predict-emotion/?labels=basic5", **_multipart("file", clip)).json()
    assert list(body["all_probabilities"]) == list(BASIC5)
    assert sum(body["all_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["all_probabilities"] == pytest.approx(reference.predict(clip, labels="basic5").scores, abs=1e-6)
    assert client.get("/emotions/?labels=app6").json()["count"] == 6
    # labels= names a taxonomy: never a file path or a mapping
    assert_error(client.post("/predict-emotion/?labels=nope", **_multipart("file", clip)), 400, "basic5")
    assert_error(client.get("/emotions/?labels=../../etc/x.json"), 400, "unknown labels")
    assert_error(client.get("/emotions/?labels=goemotions28"), 400, "labels=")


def test_realtime_and_seed001_routes(client, reference, clip):
    p = reference.predict(clip)
    r = client.post("/predict-realtime/", **_multipart("audio_buffer", clip))
    assert r.status_code == 200, r.text
    assert p.score < 0.70  # the tiny random model is unsure: seed 002's warning is shown
    assert r.json() == {"emotion": p.label, "confidence": pytest.approx(p.score, abs=1e-6),
                        "music_mood": MUSIC_MOODS[p.label], "low_confidence": True, "warning": p.warning}
    assert p.label in p.warning and f"{p.score:.2f}" in p.warning and "0.70" in p.warning
    for field in ("file", "audio"):
        r = client.post("/api/classify-emotion", **_multipart(field, clip))
        assert r.status_code == 200, r.text
        assert r.json() == {"emotion": p.label, "confidence": pytest.approx(p.score, abs=1e-6)}
    folded = client.post("/api/classify-emotion?labels=basic5", **_multipart("audio", clip)).json()
    assert folded["emotion"] in BASIC5
    # the realtime route wants its own field name
    assert_error(client.post("/predict-realtime/", **_multipart("file", clip)), 422, "audio_buffer")


def test_emotions_and_music_moods(client):
    body = client.get("/emotions/").json()
    assert body.pop("label_sets") == ["ravdess8", "ekman7", "crema6", "basic5", "app6", "core4"]  # what labels= takes
    assert body == {"emotions": list(EKMAN7), "count": 7}
    assert client.get("/music-moods/").json() == {e: MUSIC_MOODS[e] for e in EKMAN7}
    assert client.get("/music-moods/?labels=basic5").json() == {e: MUSIC_MOODS[e] for e in BASIC5}


def test_timeline_segments_tile_the_recording(client, reference, long_clip):
    r = client.post("/predict-timeline/?window_s=2&hop_s=1", **_multipart("file", long_clip))
    assert r.status_code == 200, r.text
    tl = r.json()
    assert tl["status"] == "success" and tl["duration"] == pytest.approx(8.5)
    assert tl["window_s"] == 2 and tl["hop_s"] == 1
    segs = tl["segments"]
    assert segs[0]["start"] == 0 and segs[-1]["end"] == pytest.approx(8.5)
    assert all(a["end"] == pytest.approx(b["start"]) for a, b in zip(segs, segs[1:]))
    assert all(a["emotion"] != b["emotion"] for a, b in zip(segs, segs[1:]))
    want = reference.timeline(long_clip, window_s=2, hop_s=1).to_dict()
    assert segs == want["segments"] and len(tl["windows"]) == len(want["windows"]) == 8
    assert [w["confidence"] for w in tl["windows"]] == pytest.approx([w["confidence"] for w in want["windows"]])
    assert_error(client.post("/predict-timeline/?window_s=0.01", **_multipart("file", long_clip)), 422, "window_s")


def test_timeline_window_count_is_bounded(client, long_clip, monkeypatch):
    import emovox.server.context as server_context

    monkeypatch.setattr(server_context, "MAX_TIMELINE_WINDOWS", 5)
    assert_error(client.post("/predict-timeline/?hop_s=1", **_multipart("file", long_clip)), 400, "hop_s >=")
    assert client.post("/predict-timeline/?hop_s=2", **_multipart("file", long_clip)).status_code == 200


# -- errors -------------------------------------------------------------------------------------

def _truncated(clip):
    return clip[: len(clip) // 3]


def _nan(clip):
    x = voice(1.0)
    x[100:110] = np.nan
    return wav_bytes(x, subtype="FLOAT")


@pytest.mark.parametrize("make, status, words", [
    (lambda c: b"", 400, ["empty"]),
    (lambda c: b"definitely not audio, just text" * 10, 415, ["not a recognised audio file"]),
    (lambda c: b"%PDF-1.7\n" + bytes(range(256)) * 8, 415, ["unsupported"]),
    (_truncated, 400, ["truncated"]),
    (_nan, 400, ["nan"]),
    (lambda c: wav_bytes(np.zeros(0, dtype=np.float32)), 400, ["zero audio samples"]),
    (lambda c: wav_bytes(voice(MAX_DURATION_S + 2)), 413, ["too long", "EMOVOX_MAX_DURATION_S"]),
], ids=["empty", "text", "pdf", "truncated", "nan", "zero-samples", "too-long"])
def test_bad_audio_gets_the_right_status_and_a_json_error(client, clip, make, status, words):
    for path in ("/predict-emotion/", "/predict-timeline/"):
        assert_error(client.post(path, **_multipart("file", make(clip))), status, *words)
    assert_error(client.post("/predict-realtime/", **_multipart("audio_buffer", make(clip))), status, *words)


def test_missing_field_and_wrong_body_are_422(client, clip):
    body = assert_error(client.post("/predict-emotion/", **_multipart("upload", clip)), 422, "missing", "'file'")
    assert body["detail"] == {"fields": ["file"]}
    assert_error(client.post("/predict-emotion/"), 422, "multipart/form-data")
    assert_error(client.post("/predict-emotion/", content=clip, headers={"Content-Type": "audio/wav"}), 422,
                 "multipart/form-data")
    assert_error(client.post("/api/classify-emotion", files={"file": (None, "text, not a file")}), 415)
    assert_error(client.post("/predict-emotion/", content=b"--x\r\nbroken",
                             headers={"Content-Type": "multipart/form-data; boundary=x"}), 400, "multipart")


def test_upload_over_the_size_limit_is_413_before_reading(client):
    big = np.random.default_rng(0).integers(-20000, 20000, int(MAX_UPLOAD_MB * 1024 * 1024)).astype(np.int16)
    body = assert_error(client.post("/predict-emotion/", **_multipart("file", big.tobytes())), 413,
                        "too large", "EMOVOX_MAX_UPLOAD_MB")
    assert body["detail"] == {"max_upload_bytes": int(MAX_UPLOAD_MB * 1024 * 1024)}
    assert_error(client.post("/predict-text/", json={"text": "x" * (int(MAX_UPLOAD_MB * 1024 * 1024) + 10)}), 413)


def test_unknown_route_and_method_are_json_errors(client):
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/predict-emotion/"), 405)


# -- auth, CORS ---------------------------------------------------------------------------------

def test_api_key_required_when_set(model_dir, clip):
    with TestClient(create_app(settings_for(model_dir, api_key="s3cret"))) as c:
        h = c.get("/")
        assert h.status_code == 200 and h.json()["auth"]["required"] is True  # health stays open
        assert c.get("/ui").status_code == 200 and c.get("/docs").status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.post("/predict-emotion/", headers=headers, **_multipart("file", clip))
            assert_error(r, 401, "api key")
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert_error(c.get("/emotions/", headers=headers), 401)
        assert c.post("/predict-emotion/", headers={"X-API-Key": "s3cret"}, **_multipart("file", clip)).status_code == 200
        assert c.get("/music-moods/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert_error(c.post("/predict-text/", json={"text": "hi"}), 401)
        assert_error(c.post("/predict-text/", json={"text": "hi"}, headers={"X-API-Key": "s3cret"}), 503)
        with c.websocket_connect("/stream") as ws:
            msg = ws.receive_json()
            assert msg["status"] == "error" and "api key" in msg["error"].lower()
            with pytest.raises(WebSocketDisconnect) as e:
                ws.receive_json()
            assert e.value.code == 1008
        with c.websocket_connect("/stream?api_key=s3cret") as ws:
            ws.send_bytes(np.zeros(1600, "<i2").tobytes())
            assert ws.receive_json()["status"] == "success"


def test_cors_header_only_when_configured(model_dir, client):
    origin = "https://app.example.org"
    assert "access-control-allow-origin" not in client.get("/emotions/", headers={"Origin": origin}).headers
    with TestClient(create_app(settings_for(model_dir, cors_origins=f"{origin}, http://localhost:3000"))) as c:
        r = c.get("/emotions/", headers={"Origin": origin})
        assert r.headers["access-control-allow-origin"] == origin
        pre = c.options("/predict-emotion/", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "X-API-Key"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
        assert "access-control-allow-origin" not in c.get("/", headers={"Origin": "https://evil.example"}).headers


# -- mock mode, start-up ------------------------------------------------------------------------

def test_mock_mode_is_labelled_everywhere_and_deterministic(clip, long_clip):
    with TestClient(create_app(Settings(use_mock_models=True, max_duration_s=MAX_DURATION_S))) as c:
        h = c.get("/").json()
        assert h["mock"] is True and h["models"]["audio"]["mock"] is True
        answers = [
            c.post("/predict-emotion/", **_multipart("file", clip)),
            c.post("/predict-realtime/", **_multipart("audio_buffer", clip)),
            c.post("/api/classify-emotion", **_multipart("audio", clip)),
            c.post("/predict-timeline/", **_multipart("file", long_clip)),
            c.get("/emotions/"),
            c.post("/predict-text/", json={"text": "thank you so much"}),
            c.post("/predict-text/", json={"texts": ["a", "b"]}),
            c.post("/predict-emotion/", **_multipart("file", b"not audio")),  # errors too
            c.post("/predict-emotion/"),
        ]
        for r in answers:
            assert r.json()["mock"] is True, (r.request.url, r.text)
            assert r.headers["X-Emovox-Mock"] == "true"
        assert [r.status_code for r in answers[-2:]] == [415, 422]
        # /music-moods/ is seed 002's bare {emotion: mood} mapping: no "mock" key inside it, the header says it
        moods = c.get("/music-moods/")
        assert moods.json() == {e: MUSIC_MOODS[e] for e in EKMAN7} and moods.headers["X-Emovox-Mock"] == "true"
        first = answers[0].json()
        assert c.post("/predict-emotion/", **_multipart("file", clip)).json() == first  # same bytes, same answer
        assert list(first["all_probabilities"]) == list(EKMAN7)
        assert sum(first["all_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert list(answers[5].json()["scores"]) == list(GOEMOTIONS28)
        with c.websocket_connect("/stream") as ws:
            ws.send_bytes(np.zeros(1600, "<i2").tobytes())
            assert ws.receive_json()["mock"] is True
        assert 'id="mock-banner"' in c.get("/ui").text


def test_refuses_to_start_without_a_usable_model(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="AUDIO_MODEL_DIR.*USE_MOCK_MODELS"):
        with TestClient(create_app(Settings(model=str(missing), text_model="none"))):
            pass
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "best_model.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a PyTorch checkpoint"):
        with TestClient(create_app(Settings(model=str(broken), text_model="none"))):
            pass
    # the command fails before binding a port, with one line
    assert main(["serve", "--model", str(missing), "--text-model", "none", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "emovox serve: error: cannot start the service without a speech model" in err
    assert str(missing) in err and "Traceback" not in err


def test_settings_from_environment():
    env = {"AUDIO_MODEL_DIR": "m", "TEXT_MODEL_DIR": "none", "CONFIDENCE_THRESHOLD": "0.5",
           "EMOVOX_MAX_UPLOAD_MB": "3", "EMOVOX_MAX_DURATION_S": "60", "EMOVOX_API_KEY": "k",
           "EMOVOX_CORS_ORIGINS": "http://a, http://b/", "USE_MOCK_MODELS": "yes", "EMOVOX_TORCH_THREADS": "1",
           "EMOVOX_MAX_CONCURRENCY": "3"}
    s = Settings.from_env(env)
    assert (s.model, s.threshold, s.max_upload_bytes, s.max_duration_s, s.api_key, s.cors_origins,
            s.use_mock_models, s.text_disabled, s.torch_threads, s.max_concurrency) == (
        "m", 0.5, 3 * 1024 * 1024, 60.0, "k", ("http://a", "http://b"), True, True, 1, 3)
    assert Settings.from_env(s.to_env()) == s
    assert Settings.from_env(env, threshold=0.9, model="other").threshold == 0.9
    assert Settings.from_env({}).use_mock_models is False  # mock is opt-in only
    with pytest.raises(ValueError, match="USE_MOCK_MODELS"):
        Settings.from_env({"USE_MOCK_MODELS": "maybe"})
    with pytest.raises(ValueError, match="CONFIDENCE_THRESHOLD"):
        Settings.from_env({"CONFIDENCE_THRESHOLD": "high"})
    with pytest.raises(ValueError, match="threshold"):
        Settings(threshold=1.5)


SETTINGS_VARS = ("AUDIO_MODEL_DIR", "TEXT_MODEL_DIR", "CONFIDENCE_THRESHOLD", "EMOVOX_MAX_CONCURRENCY",
                 "USE_MOCK_MODELS", "EMOVOX_ENV_FILE")


def test_dotenv_file_then_environment_then_flags(tmp_path, monkeypatch, capsys):
    for name in SETTINGS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "# server/.env as in seed 004\n"
        "TEXT_MODEL_DIR=none\n"
        "AUDIO_MODEL_DIR='from-dotenv'\n"
        "export CONFIDENCE_THRESHOLD=0.6  # a comment\n"
        "USE_MOCK_MODELS=false\n"
        "UNRELATED_SECRET=x\n")
    s = Settings.from_env()
    assert (s.model, s.text_disabled, s.threshold, s.use_mock_models) == ("from-dotenv", True, 0.6, False)
    monkeypatch.setenv("CONFIDENCE_THRESHOLD", "0.8")  # the environment wins over the file
    assert Settings.from_env().threshold == 0.8 and Settings.from_env().model == "from-dotenv"
    assert Settings.from_env(threshold=0.9).threshold == 0.9  # flags win over both
    assert Settings.from_env({}).model is None  # an explicit environment is the whole environment
    (tmp_path / "other.env").write_text("AUDIO_MODEL_DIR=from-other\n")
    assert Settings.from_env(env_file=tmp_path / "other.env").model == "from-other"
    monkeypatch.setenv("EMOVOX_ENV_FILE", "none")
    assert Settings.from_env().model is None
    monkeypatch.delenv("EMOVOX_ENV_FILE")
    # emovox serve reads it too (here the model it names is missing: one line, exit 2, before binding a port)
    assert main(["serve", "--port", "1"]) == 2
    assert "from-dotenv" in capsys.readouterr().err
    assert main(["serve", "--port", "1", "--model", str(tmp_path / "flag-model")]) == 2
    err = capsys.readouterr().err
    assert "flag-model" in err and "from-dotenv" not in err


def test_mock_auto_only_replaces_what_cannot_load(model_dir, clip, tmp_path, caplog):
    assert Settings.from_env({"USE_MOCK_MODELS": "auto"}).use_mock_models == "auto"
    assert Settings.from_env(Settings(use_mock_models="auto").to_env()).use_mock_models == "auto"
    with pytest.raises(ValueError, match="USE_MOCK_MODELS must be true, false or auto"):
        Settings.from_env({"USE_MOCK_MODELS": "sometimes"})
    upload = _multipart("file", clip)
    # a real speech model loads: no mock anywhere
    with TestClient(create_app(settings_for(model_dir, use_mock_models="auto"))) as c:
        assert c.get("/").json()["mock"] is False
        r = c.post("/predict-emotion/", **upload)
        assert "mock" not in r.json() and "X-Emovox-Mock" not in r.headers
    # no speech model can be loaded: its mock answers, said loudly and marked in every answer
    caplog.clear()
    with caplog.at_level("WARNING", logger="emovox.server.services"):
        with TestClient(create_app(settings_for(tmp_path / "missing", use_mock_models="auto"))) as c:
            h = c.get("/").json()
            assert h["mock"] is True and h["models"]["audio"]["mock"] is True
            assert "missing" in h["models"]["audio"]["mock_reason"]
            for r in (c.post("/predict-emotion/", **upload), c.post("/predict-realtime/", **_multipart("audio_buffer", clip)),
                      c.get("/emotions/"), c.post("/predict-emotion/", **_multipart("file", b"junk"))):
                assert r.json()["mock"] is True and r.headers["X-Emovox-Mock"] == "true", r.text
            assert c.get("/music-moods/").json() == {e: MUSIC_MOODS[e] for e in EKMAN7}
    assert any("NO REAL SPEECH MODEL COULD BE LOADED" in rec.getMessage() for rec in caplog.records)
    # the speech model loads, the configured text model does not: only text is mocked
    with TestClient(create_app(settings_for(model_dir, text_model=str(tmp_path / "no-text"), use_mock_models="auto"))) as c:
        h = c.get("/").json()
        assert h["mock"] is True and "mock" not in h["models"]["audio"] and h["models"]["text"]["mock"] is True
        assert "mock" not in c.post("/predict-emotion/", **upload).json()
        assert c.post("/predict-text/", json={"text": "thanks"}).json()["mock"] is True
    # false (the default) still refuses to start
    with pytest.raises(ModelLoadError, match="USE_MOCK_MODELS=auto"):
        with TestClient(create_app(settings_for(tmp_path / "missing"))):
            pass


def test_predict_emotion_says_the_clips_quality_and_raises_the_threshold_on_poor_input(client, reference, clip):
    """Each answer measures its clip as the library does; a noisy clip's threshold rises by
    POOR_INPUT_THRESHOLD_RAISE and its warning says why."""
    from emovox.defaults import POOR_INPUT_THRESHOLD_RAISE

    body = client.post("/predict-emotion/", **_multipart("file", clip)).json()
    assert body["quality"] == reference.predict(clip).quality.to_dict() and body["quality"]["issues"] == []
    x = voice(3.0) + np.random.default_rng(0).normal(0, 0.2, int(3.0 * SR))
    noisy = wav_bytes(0.5 * x / np.abs(x).max())
    p = reference.predict(noisy)
    body = client.post("/predict-emotion/", **_multipart("file", noisy)).json()
    assert body["quality"]["issues"] and body["quality"]["issues"][0].startswith("noisy")
    assert body["threshold"] == pytest.approx(0.70 + POOR_INPUT_THRESHOLD_RAISE)
    assert body["low_confidence"] is (p.score < body["threshold"]) and body["warning"] == p.warning
    if body["low_confidence"]:
        assert "noisy" in body["warning"]


def test_warning_and_unsupported_labels_in_every_answer(client, reference, clip, long_clip):
    """Seed 002: predictions under 0.70 show a warning; labels the model cannot express are named."""
    p = reference.predict(clip, labels="ravdess8")
    assert p.low_confidence and p.unsupported_labels == ("calm",) and p.scores["calm"] == 0.0
    assert p.to_dict()["warning"] == p.warning and p.to_dict()["unsupported_labels"] == ["calm"]
    body = client.post("/predict-emotion/?labels=ravdess8", **_multipart("file", clip)).json()
    assert body["low_confidence"] is True and body["warning"] == p.warning
    assert body["unsupported_labels"] == ["calm"] and body["all_probabilities"]["calm"] == 0.0
    assert {k: v for k, v in client.get("/emotions/?labels=ravdess8").json().items() if k != "label_sets"} == {
        "emotions": list(RAVDESS8), "count": 8, "unsupported_labels": ["calm"]}
    plain = client.post("/predict-emotion/?labels=basic5", **_multipart("file", clip)).json()
    assert "unsupported_labels" not in plain  # every basic5 label is reachable from ekman7
    tl = client.post("/predict-timeline/?labels=ravdess8", **_multipart("file", long_clip)).json()
    for w in tl["windows"]:
        assert w["unsupported_labels"] == ["calm"] and ("warning" in w) == w["low_confidence"]
    with client.websocket_connect("/stream?labels=ravdess8") as ws:
        ws.send_bytes((voice(1.0) * 32767).astype("<i2").tobytes())
        update = ws.receive_json()
    assert update["unsupported_labels"] == ["calm"] and ("warning" in update) == update["low_confidence"]
    confident = load_model(client.app.state.settings.model, threshold=0.01).predict(clip)
    assert confident.warning is None and "warning" not in confident.to_dict()


# -- text -----------------------------------------------------------------------------------------

def test_text_unavailable_is_503(client):
    body = assert_error(client.post("/predict-text/", json={"text": "I love it"}), 503, "text", "unavailable")
    assert body["detail"]["text_model"]["available"] is False


def test_speech_is_served_while_the_default_text_model_loads(model_dir, clip):
    """emovox serve: the speech model loads before the port opens, the shipped text model after it; text
    requests answer 503 with Retry-After until it is in, speech requests at once."""
    from emovox.server.services import finish_loading_text, load_services

    settings = settings_for(model_dir, text_model=None)
    services = load_services(settings, text_in_background=True)
    assert services.text is None and services.text_info["loading"] is True and "text" not in services.load_s
    with TestClient(create_app(settings, services=services)) as c:
        waiting = c.post("/predict-text/", json={"text": "I love it"})
        assert waiting.status_code == 503 and waiting.headers["retry-after"] == "2"
        assert "still loading" in waiting.json()["error"]
        assert c.post("/predict-emotion/", files={"file": ("a.wav", clip, "audio/wav")}).status_code == 200
        assert c.get("/readyz").status_code == 200
        finish_loading_text(settings, services)
        assert "loading" not in services.text_info and services.load_s["text"] > 0
        after = c.post("/predict-text/", json={"text": "I love it"})
        if services.text_info["available"]:  # the shipped text model is installed
            assert after.status_code == 200 and after.json()["status"] == "success"
        else:
            assert after.status_code == 503 and "retry-after" not in after.headers


def test_text_model_by_shipped_name(model_dir):
    """TEXT_MODEL_DIR / --text-model take a shipped text model's name (minilm = default) as well as a folder."""
    from emovox.server.services import load_text
    from emovox.text import default_model_path

    model, info = load_text(settings_for(model_dir, text_model="minilm"))
    assert info["available"] and info["name"] == "default" and str(model.path) == str(default_model_path())
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_text(settings_for(model_dir, text_model="no-such-model"))


def _tiny_text_model(root):
    """A text model folder on a tiny random BERT (no download), in emovox.text's format."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from emovox.text import model as tm
    from emovox.text.head import MLPHead

    enc = root / "tiny-bert"
    enc.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"i am so happy sad thank you what".split(),
             *"abcdefghijklmnopqrstuvwxyz!?.,'"]
    (enc / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(enc / "vocab.txt"), do_lower_case=True).save_pretrained(enc)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(enc)
    out = root / "text-model"
    out.mkdir()
    labels = list(GOEMOTIONS28)
    head = MLPHead(16, len(labels), hidden_dim=8, dropout=0.0)
    tm.save_weights(out / tm.HEAD_FILE, head.state_dict())
    tm.write_json(out / tm.LABELS_FILE, labels)
    tm.write_json(out / tm.CONFIG_FILE, {
        "format": tm.FORMAT, "format_version": tm.FORMAT_VERSION, "encoder": {"name": str(enc), "path": str(enc)},
        "max_length": 16, "labels": labels, "head": {"file": tm.HEAD_FILE, **head.config()},
        "thresholds": dict.fromkeys(labels, 0.5), "global_threshold": 0.5, "top_k": 0, "always_one": True})
    return out


@pytest.mark.slow
def test_text_endpoint_with_a_text_model(model_dir, tmp_path_factory):
    pytest.importorskip("transformers")
    text_dir = _tiny_text_model(tmp_path_factory.mktemp("text"))
    from emovox.text import load_text_model

    reference = load_text_model(text_dir)
    with TestClient(create_app(settings_for(model_dir, text_model=str(text_dir)))) as c:
        h = c.get("/").json()
        assert h["text_available"] is True and h["models"]["text"]["name"] == "text-model"
        one = c.post("/predict-text/", json={"text": "i am so happy"})
        assert one.status_code == 200, one.text
        body = one.json()
        want = reference.predict(["i am so happy"])[0]
        assert body["status"] == "success" and body["text"] == "i am so happy"
        assert list(body["scores"]) == list(GOEMOTIONS28)
        assert body["scores"] == pytest.approx(want.scores, abs=1e-6)
        assert [x["label"] for x in body["labels"]] == [x["label"] for x in want.labels]
        assert body["label"] == want.label and body["label_set"] == "goemotions"
        batch = c.post("/predict-text/?labels=audio7", json={"texts": ["i am so happy", "what", "thank you"]}).json()
        assert batch["count"] == 3 and [r["text"] for r in batch["results"]] == ["i am so happy", "what", "thank you"]
        assert list(batch["results"][0]["scores"]) == list(EKMAN7)
        long = c.post("/predict-text/", json={"text": "i am so happy " * 20}).json()
        assert long["truncated"] is True
        assert_error(c.post("/predict-text/", json={"texts": ["fine", "   "]}), 400, "text 1", "empty")
        assert_error(c.post("/predict-text/?labels=plutchik", json={"text": "x"}), 400, "goemotions")
        assert_error(c.post("/predict-text/", json={"text": "a", "texts": ["b"]}), 422, "exactly one")
        assert_error(c.post("/predict-text/", json={}), 422, "exactly one")
        assert_error(c.post("/predict-text/", json={"texts": "not a list"}), 422)
        assert_error(c.post("/predict-text/", content=b"{not json", headers={"Content-Type": "application/json"}),
                     422)
    with pytest.raises(ModelLoadError, match="text model"):
        with TestClient(create_app(settings_for(model_dir, text_model=str(text_dir / "missing")))):
            pass


# -- streaming ------------------------------------------------------------------------------------

def test_websocket_stream_updates_and_final_equals_predict(client, clip):
    pcm, sr = sf.read(io.BytesIO(clip), dtype="int16")
    assert sr == SR
    data = pcm.astype("<i2").tobytes()
    chunk = 2 * SR // 4  # 250 ms
    expected = client.post("/predict-emotion/", **_multipart("file", clip)).json()
    with client.websocket_connect("/stream") as ws:
        updates = []
        for i in range(0, len(data), chunk):
            ws.send_bytes(data[i: i + chunk])
            updates.append(ws.receive_json())
        assert len(updates) == 12 and all(u["final"] is False and u["status"] == "success" for u in updates)
        assert [u["time_s"] for u in updates] == pytest.approx([0.25 * (k + 1) for k in range(12)])
        assert set(updates[-1]["scores"]) == set(EKMAN7)
        ws.send_bytes(b"\x01\x02\x03")  # odd byte count: an error, and the connection stays usable
        err = ws.receive_json()
        assert err["status"] == "error" and err["code"] == "bad_frame" and "even number of bytes" in err["error"]
        ws.send_text("hello")
        assert ws.receive_json()["code"] == "bad_message"
        ws.send_text(json.dumps({"event": "end"}))
        final = ws.receive_json()
        assert final["final"] is True and final["time_s"] == pytest.approx(3.0)
        assert final["emotion"] == expected["emotion"]
        assert final["score"] == pytest.approx(expected["confidence"], abs=1e-4)
        assert final["scores"] == pytest.approx(expected["all_probabilities"], abs=1e-4)
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
        assert e.value.code == 1000


def test_websocket_stream_limits_and_folding(client):
    with client.websocket_connect("/stream?labels=basic5") as ws:
        ws.send_bytes(np.zeros(SR, "<i2").tobytes())
        assert list(ws.receive_json()["scores"]) == list(BASIC5)
        ws.send_text(json.dumps({"event": "reset"}))
        assert ws.receive_json()["event"] == "reset"
        ws.send_text(json.dumps({"event": "end"}))
        assert ws.receive_json() == {"status": "error", "error": "no audio was received", "detail": None, "final": True}
    with client.websocket_connect("/stream") as ws:
        second = np.zeros(SR, "<i2").tobytes()
        for _ in range(int(MAX_DURATION_S)):
            ws.send_bytes(second)
            ws.receive_json()
        ws.send_bytes(second)
        assert "too long" in ws.receive_json()["error"]
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
        assert e.value.code == 1009
    with client.websocket_connect("/stream?labels=bogus") as ws:
        assert "unknown labels" in ws.receive_json()["error"]


def test_websocket_streaming_lstm_answers_every_chunk_in_the_requested_order(tmp_path):
    """Seed 003's frontend waits for a reply after each chunk: all-zero chunks are answered (silent),
    class and confidence follow ?labels=app6, and ?final_answer=mean averages every frame."""
    from emovox.data.labels import APP6

    torch.manual_seed(0)
    cfg = preset("framewise-librosa-mfcc13")
    model = build_model("lstm", n_features=13, n_classes=len(EKMAN7), hidden_size=16)
    stats = FeatureStats([-400.0] + [0.0] * 12, [200.0] + [30.0] * 12)
    save_model(tmp_path / "lstm", model.eval(), make_config(model_name="lstm", model_kwargs=model.kwargs, features=cfg,
                                                            labels=list(EKMAN7), stats=stats, temperature=0.5))
    speech = (np.clip(voice(1.0), -1, 1) * 32767).astype("<i2").tobytes()
    with TestClient(create_app(settings_for(tmp_path / "lstm"))) as c:
        with c.websocket_connect("/stream?labels=app6&final_answer=mean") as ws:
            ws.send_bytes(b"")  # nothing yet: an error reply, not silence
            assert ws.receive_json()["code"] == "bad_frame"
            ups = []
            for chunk in (np.zeros(SR // 2, "<i2").tobytes(), speech[:8000], speech[8000:]):
                ws.send_bytes(chunk)
                ups.append(ws.receive_json())
            ws.send_text(json.dumps({"event": "end"}))
            final = ws.receive_json()
        assert [u.get("silent", False) for u in ups] == [True, False, False] and final["final"] is True
        for u in (*ups, final):
            assert u["class"] == APP6.index(u["emotion"]) and u["confidence"] == list(u["scores"].values())
            assert list(u["scores"]) == list(APP6)
        assert final["confidence"] == ups[-1]["confidence"] and final["frames"] == ups[-1]["frames"] > 90
        with c.websocket_connect("/stream?final_answer=first") as ws:
            assert "final_answer must be one of last, mean" in ws.receive_json()["error"]


def test_websocket_final_answer_mean_needs_a_frame_model(client):
    with client.websocket_connect("/stream?final_answer=mean") as ws:
        assert "classifies windows" in ws.receive_json()["error"]
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
        assert e.value.code == 1008


# -- service behaviour ------------------------------------------------------------------------------

def test_inference_runs_off_the_event_loop_behind_a_limiter(model_dir, clip):
    """With one inference thread, no batching and a slow model, health answers at once and predictions queue."""
    app = create_app(settings_for(model_dir).replace(max_concurrency=1, max_batch=1))
    done_at: dict[str, float] = {}

    async def timed(name, request):
        response = await request
        done_at[name] = time.perf_counter()
        return response

    async def scenario():
        async with app.router.lifespan_context(app):
            model = app.state.services.audio
            real = model.probabilities

            def slow_probabilities(*a, **k):
                time.sleep(0.6)  # blocking, as real inference is
                return real(*a, **k)

            model.probabilities = slow_probabilities
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
                preds = [asyncio.create_task(timed(f"p{i}", ac.post("/predict-emotion/", files={"file": ("a.wav", clip)})))
                         for i in range(2)]
                await asyncio.sleep(0.05)
                health = await timed("health", ac.get("/"))
                return health, await asyncio.gather(*preds)

    health, preds = asyncio.run(scenario())
    assert health.status_code == 200 and [r.status_code for r in preds] == [200, 200]
    assert done_at["health"] < min(done_at["p0"], done_at["p1"])  # the loop was free while models ran
    assert abs(done_at["p1"] - done_at["p0"]) >= 0.5  # one slot: the second waited for the first


def test_web_page_and_assets_are_served(client):
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and len(r.content) > 500
        assert f"/ui/{name}" in page.text
    for bad in ("/ui/index.html", "/ui/..%2F__init__.py", "/ui/settings.py", "/ui/%2e%2e%2fapp.py"):
        assert client.get(bad).status_code == 404


def test_openapi_declares_response_models_and_uploads(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("EmotionResponse", "RealtimeResponse", "ClassifyResponse", "EmotionsResponse", "TimelineResponse",
                 "TextResponse", "TextBatchResponse", "Health", "ErrorResponse"):
        assert name in schemas
    op = spec["paths"]["/predict-emotion/"]["post"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/EmotionResponse")
    assert {"400", "401", "413", "415", "422"} <= set(op["responses"])
    assert op["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    realtime = spec["paths"]["/predict-realtime/"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "audio_buffer" in realtime["schema"]["properties"]
    assert "503" in spec["paths"]["/predict-text/"]["post"]["responses"]
    assert client.get("/docs").status_code == 200


# -- one real server process ------------------------------------------------------------------------

def _raw_post(host, port, head: bytes, body_chunks=None, limit_bytes=200 * 1024 * 1024):
    """Send a request over a raw socket; stream body chunks until the server answers. -> (response, bytes sent)."""
    s = socket.create_connection((host, port), timeout=30)
    try:
        s.sendall(head)
        sent = 0
        while body_chunks is not None and sent < limit_bytes:
            readable, writable, _ = select.select([s], [s], [], 10)
            if readable:
                break
            if writable:
                try:
                    c = next(body_chunks)
                    s.sendall(c)
                    sent += len(c)
                except (BrokenPipeError, ConnectionResetError, StopIteration):
                    break
        s.settimeout(10)
        return _read_response(s), sent
    finally:
        s.close()


def _read_response(s) -> bytes:
    """One whole HTTP response (headers and a Content-Length body) from a socket."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _response_length(data):
        try:
            more = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not more:
            break
        data += more
    return data


def _response_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(data)


def test_real_server_process(model_dir, clip):
    from websockets.sync.client import connect

    env = {"AUDIO_MODEL_DIR": str(model_dir), "TEXT_MODEL_DIR": "none", "EMOVOX_MAX_UPLOAD_MB": "1",
           "EMOVOX_TORCH_THREADS": "1"}
    with server_process(env) as srv:
        assert httpx.get(srv.url + "/").json()["labels"] == list(EKMAN7)
        r = httpx.post(srv.url + "/predict-emotion/", files={"file": ("clip.wav", clip, "audio/wav")})
        assert r.status_code == 200 and r.json()["status"] == "success"

        # Content-Length of 2 GB: refused up front, nothing read
        head = (b"POST /predict-emotion/ HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 2147483648\r\n\r\n")
        response, _ = _raw_post(srv.host, srv.port, head)
        assert response.startswith(b"HTTP/1.1 413") and b"too large" in response

        # chunked upload without a length: counted while reading, refused at the limit, not read to the end
        head = (b"POST /predict-emotion/ HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        pre = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'

        def chunks():
            yield b"%x\r\n%s\r\n" % (len(pre), pre)
            block = b"\x00" * 65536
            while True:
                yield b"%x\r\n%s\r\n" % (len(block), block)

        response, sent = _raw_post(srv.host, srv.port, head, chunks())
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert sent < 64 * 1024 * 1024  # stopped long before the 200 MB the client was ready to send

        # the service still answers after both
        assert httpx.post(srv.url + "/api/classify-emotion", files={"audio": ("a.wav", clip)}).status_code == 200

        # WebSocket over the network
        pcm, _ = sf.read(io.BytesIO(clip), dtype="int16")
        with connect(srv.url.replace("http", "ws") + "/stream") as ws:
            data = pcm.astype("<i2").tobytes()
            for i in range(0, len(data), 16000):
                ws.send(data[i: i + 16000])
                assert json.loads(ws.recv())["final"] is False
            ws.send(json.dumps({"event": "end"}))
            final = json.loads(ws.recv())
        assert final["final"] is True and final["emotion"] == r.json()["emotion"]

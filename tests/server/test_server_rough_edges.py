"""Rough edges a user of the seeds met on the HTTP service: slash aliases both ways, the label sets each route
accepts, the mock model behind seed 001's five-class route."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from emovox.data.labels import BASIC5, TAXONOMIES  # noqa: E402
from emovox.server import Settings, create_app  # noqa: E402
from emovox.testing import create_model  # noqa: E402


def _wav(seconds=1.0) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = create_model(tmp_path_factory.mktemp("m") / "ekman")
    with TestClient(create_app(Settings(model=str(folder), text_model="none"))) as c:
        yield c


def test_classify_emotion_with_a_trailing_slash_answers_as_without(client):
    """Seed 001's `POST /api/classify-emotion/` (trailing slash) answers like `/api/classify-emotion`, not 307."""
    files = {"file": ("a.wav", _wav())}
    bare = client.post("/api/classify-emotion", files=files)
    slash = client.post("/api/classify-emotion/", files=files, follow_redirects=False)
    assert bare.status_code == 200 and slash.status_code == 200, slash.text
    assert slash.json() == bare.json()


def test_speech_routes_list_exactly_the_label_sets_they_answer_in(client):
    """Every set a refusal or /emotions/ lists as accepted answers; every other set is refused, naming them."""
    accepted = client.get("/emotions/").json()["label_sets"]
    assert "basic5" in accepted and "goemotions28" not in accepted
    for name in TAXONOMIES:
        r = client.post(f"/predict-emotion/?labels={name}", files={"file": ("a.wav", _wav())})
        assert (r.status_code == 200) is (name in accepted), (name, r.text)
        if name not in accepted:
            body = r.json()
            assert body["detail"]["accepted"] == accepted and ", ".join(accepted) in body["error"]
    r = client.post("/predict-emotion/?labels=goemotions28", files={"file": ("a.wav", _wav())})
    assert r.status_code == 400 and "cannot fold" not in r.json()["error"]
    assert list(client.get("/emotions/?labels=basic5").json()["emotions"]) == list(BASIC5)


def test_the_mock_model_answers_seed001s_five_classes_and_says_it_is_a_mock():
    """Seed 001's stub fallback: with mock models, `/api/classify-emotion` answers one of its five classes, marked as a
    mock in the body and the header; the seed-002 route keeps the mock's own labels, marked too."""
    with TestClient(create_app(Settings(model="none", text_model="none", use_mock_models=True))) as c:
        for i in range(6):
            r = c.post("/api/classify-emotion", files={"audio": ("a.wav", _wav(1.0 + i / 10))})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["emotion"] in BASIC5 and body["mock"] is True and r.headers["X-Emovox-Mock"] == "true"
        body = c.post("/predict-emotion/", files={"file": ("a.wav", _wav())}).json()
        assert body["mock"] is True and len(body["all_probabilities"]) == 7


def test_websocket_updates_of_a_windowed_model_say_the_seconds_classified(client):
    """A windowed model's updates carry `window_s` (the seconds its answer is about), never `"frames": 0`."""
    chunk = (np.frombuffer(_wav(0.5)[44:], "<i2")).tobytes()
    with client.websocket_connect("/stream") as ws:
        ups = []
        for _ in range(8):
            ws.send_bytes(chunk)
            ups.append(ws.receive_json())
    assert all("frames" not in u for u in ups)
    assert [u["window_s"] for u in ups] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0, 3.0]


def test_a_relative_model_path_from_dotenv_says_where_it_came_from(tmp_path, monkeypatch, capsys):
    """Seed 004's `cd server && emovox serve` with the document's `server/.env`: the refusal names the .env file the
    value came from and the folder the relative path was resolved against."""
    from emovox.cli import main

    server = tmp_path / "server"
    server.mkdir()
    (server / ".env").write_text("AUDIO_MODEL_DIR=ai/models/audio/checkpoint\nUSE_MOCK_MODELS=false\n")
    monkeypatch.chdir(server)
    for name in ("AUDIO_MODEL_DIR", "USE_MOCK_MODELS", "EMOVOX_ENV_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "'ai/models/audio/checkpoint' came from AUDIO_MODEL_DIR in .env" in err, err
    assert f"resolved against the working folder {server}" in err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_server_exits_promptly_after_sigterm(tmp_path, workers):
    """`emovox serve` (one worker, or `--workers 2`) stops within a second of SIGTERM, not after seconds of teardown."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    folder = create_model(tmp_path / "m")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "emovox.cli", "serve", "--model", str(folder), "--text-model",
                             "none", "--port", str(port), "--workers", workers], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "EMOVOX_ENV_FILE": "none"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(0.5)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - t < 1.5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

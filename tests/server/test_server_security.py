"""Hardening of the HTTP service: limits enforced while a body streams in, multipart limits, API keys,
CORS closed by default, read-only model folders, and the WebSocket stream under hostile clients
(giant frames, endless streams, clients that vanish or stop reading, odd chunkings, all-zero chunks).

Models are tiny random ones (``emovox.testing.create_model``); clips are generated tones. The
schema-driven HTTP fuzzing is ``test_server_schema.py``; the long campaign is ``benchmarks/fuzz.py``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from emovox.server import Settings, create_app  # noqa: E402
from emovox.server.process import server_process  # noqa: E402
from emovox.server.settings import (  # noqa: E402
    DEFAULT_MAX_PARTS,
    MAX_PART_HEADER_BYTES,
    MAX_WS_TEXT_BYTES,
    MIN_WS_FRAME_S,
)
from emovox.testing import create_model  # noqa: E402

SR = 16000
MAX_UPLOAD_MB = 1.0
LIMIT = int(MAX_UPLOAD_MB * 1024 * 1024)
MAX_DURATION_S = 8.0
KEY = "s3cret-key"
FUZZ = settings(max_examples=8, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def tone(seconds: float, f0: float = 180.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * k * f0 * t * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / k for k in range(1, 6))
    return (0.3 * x / np.abs(x).max() + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def wav(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return create_model(tmp_path_factory.mktemp("security") / "tiny-cnn", temperature=0.3)


@pytest.fixture(scope="module")
def clip() -> bytes:
    return wav(tone(2.0))


def settings_for(model_dir, **kw) -> Settings:
    kw.setdefault("text_model", "none")
    return Settings(model=str(model_dir), max_upload_mb=MAX_UPLOAD_MB, max_duration_s=MAX_DURATION_S,
                    max_concurrency=2, **kw)


@pytest.fixture(scope="module")
def client(model_dir):
    with TestClient(create_app(settings_for(model_dir))) as c:
        yield c


def assert_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == "error" and body["error"]
    for w in words:
        assert w.lower() in body["error"].lower(), body["error"]
    return body


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"xyzzy") -> tuple[bytes, dict[str, str]]:
    """A multipart body from ``(header lines, content)`` pairs, and its Content-Type header."""
    body = b"".join(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n" for head, data in parts)
    return body + b"--" + boundary + b"--\r\n", {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()}


def file_part(name: str, data: bytes, filename: str = "clip.wav") -> tuple[bytes, bytes]:
    return (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: audio/wav").encode(), data


# -- the body limit while the body streams in ----------------------------------------------------------

def asgi_post(client: TestClient, path: str, headers: dict[str, str], chunks) -> tuple[int, dict, int, bool]:
    """POST through the raw ASGI interface with the body pulled chunk by chunk, as a server hands it over.
    -> (status, JSON body, bytes the app pulled, whether it pulled the body to its end)"""
    it, pulled, ended, sent = iter(chunks), 0, False, []

    async def receive():
        nonlocal pulled, ended
        if ended:
            return {"type": "http.disconnect"}
        chunk = next(it, None)
        if chunk is None:
            ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
    client.portal.call(client.app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled, ended


def endless(first: bytes = b"", block: int = 64 * 1024, cap_bytes: int = 64 * LIMIT):
    """``first``, then zero blocks: 64 times the limit at most, so a server that reads it all fails here, not hangs."""
    yield first
    yield from itertools.repeat(b"\0" * block, cap_bytes // block)


def test_streamed_multipart_over_the_limit_is_413_before_the_rest_is_read(client, clip):
    head, ctype = multipart([file_part("file", b"")])
    status, body, pulled, ended = asgi_post(client, "/predict-emotion/", ctype, endless(head[: head.index(b"\r\n\r\n") + 4]))
    assert status == 413 and "too large" in body["error"] and "EMOVOX_MAX_UPLOAD_MB" in body["error"]
    assert body["detail"] == {"max_upload_bytes": LIMIT}
    assert not ended and pulled <= LIMIT + 64 * 1024  # stopped at the limit, one block past it at most
    assert client.post("/predict-emotion/", files={"file": ("a.wav", clip, "audio/wav")}).status_code == 200


def test_streamed_raw_json_body_over_the_limit_is_413(client):
    status, body, pulled, ended = asgi_post(client, "/predict-text/", {"Content-Type": "application/json"},
                                            endless(b'{"text": "', block=32 * 1024))
    assert status == 413 and "too large" in body["error"] and not ended and pulled <= LIMIT + 32 * 1024
    # a declared Content-Length over the limit: refused before a single byte is pulled
    status, body, pulled, _ = asgi_post(client, "/predict-emotion/", {"Content-Type": "multipart/form-data; boundary=b",
                                                                      "Content-Length": str(2**40)}, endless())
    assert status == 413 and pulled == 0 and f"{2**40} bytes" in body["error"]
    status, body, pulled, _ = asgi_post(client, "/predict-emotion/", {"Content-Length": "12abc"}, endless())
    assert status == 400 and "Content-Length" in body["error"] and pulled == 0
    assert client.get("/emotions/").status_code == 200


# -- multipart limits -------------------------------------------------------------------------------

def test_too_many_multipart_parts_is_413(client, clip):
    fields = [(f'Content-Disposition: form-data; name="f{i}"'.encode(), b"x") for i in range(DEFAULT_MAX_PARTS)]
    body, ctype = multipart([*fields, file_part("file", clip)])
    err = assert_error(client.post("/predict-emotion/", content=body, headers=ctype), 413, "too many multipart parts",
                       "EMOVOX_MAX_PARTS")
    assert err["detail"] == {"max_parts": DEFAULT_MAX_PARTS}
    body, ctype = multipart([*fields[:3], file_part("file", clip)])  # a few extra fields are fine
    assert client.post("/predict-emotion/", content=body, headers=ctype).status_code == 200


def test_many_empty_parts_are_stopped_at_the_limit_not_parsed_to_the_end(model_dir, clip):
    parts = [(b'Content-Disposition: form-data; name="f"', b"")] * 15000  # 15000 parts in 0.8 MB
    body, ctype = multipart(parts)
    with TestClient(create_app(settings_for(model_dir, max_parts=4))) as c:
        t = time.perf_counter()
        assert_error(c.post("/api/classify-emotion", content=body, headers=ctype), 413, "more than 4")
        assert time.perf_counter() - t < 2.0
        assert c.post("/api/classify-emotion", files={"audio": ("a.wav", clip)}).status_code == 200


def test_oversized_part_headers_are_413(client, clip):
    name = "a" * (MAX_PART_HEADER_BYTES + 1)
    body, ctype = multipart([file_part("file", clip, filename=name)])
    err = assert_error(client.post("/predict-emotion/", content=body, headers=ctype), 413, "part headers too large")
    assert err["detail"] == {"max_part_header_bytes": MAX_PART_HEADER_BYTES}
    body, ctype = multipart([file_part("file", clip, filename="../../../etc/passwd\0.wav")])
    assert client.post("/predict-emotion/", content=body, headers=ctype).status_code == 200  # a name is only a name


def test_max_parts_setting_from_environment_and_checked():
    assert Settings.from_env({"EMOVOX_MAX_PARTS": "3"}).max_parts == 3
    assert Settings.from_env({}).max_parts == DEFAULT_MAX_PARTS
    assert Settings.from_env({"EMOVOX_MAX_PARTS": "3"}).to_env()["EMOVOX_MAX_PARTS"] == "3"
    with pytest.raises(ValueError, match="max parts must be at least 1"):
        Settings(max_parts=0)


# -- API key, CORS ---------------------------------------------------------------------------------

def test_wrong_api_keys_are_401(model_dir, clip):
    with TestClient(create_app(settings_for(model_dir, api_key=KEY))) as c:
        for bad in ("", KEY[:-1], KEY + "x", KEY.upper(), " " + KEY + "x", "é" * 3, "\x00" + KEY):
            for headers in ({"X-API-Key": bad}, {"Authorization": f"Bearer {bad}"}):
                r = c.post("/api/classify-emotion", files={"audio": ("a.wav", clip)},
                           headers={k: v.encode("utf-8") for k, v in headers.items()})
                assert_error(r, 401, "api key")
        assert c.get("/emotions/", headers={"X-API-Key": KEY}).status_code == 200
        # a wrong header beside a right one still lets the right one in (each candidate is checked)
        assert c.get("/emotions/", headers={"X-API-Key": "wrong", "Authorization": f"Bearer {KEY}"}).status_code == 200
        with c.websocket_connect("/stream?api_key=" + KEY[:-1]) as ws:
            assert "api key" in ws.receive_json()["error"].lower()
            with pytest.raises(WebSocketDisconnect) as e:
                ws.receive_json()
            assert e.value.code == 1008


def test_key_comparison_hashes_both_sides_before_a_constant_time_compare():
    import inspect

    from emovox.server.auth import key_ok as _key_ok

    src = inspect.getsource(_key_ok)
    assert "hmac.compare_digest" in src and "sha256" in src
    assert _key_ok(None, None) and _key_ok(KEY, "x", KEY) and not _key_ok(KEY, None, KEY[:-1], KEY + KEY)


def test_cors_preflight_is_closed_by_default(client):
    origin = "https://evil.example"
    pre = client.options("/predict-emotion/", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "X-API-Key"})
    assert pre.status_code == 405 and not [h for h in pre.headers if h.startswith("access-control-")]
    r = client.get("/emotions/", headers={"Origin": origin})
    assert r.status_code == 200 and not [h for h in r.headers if h.startswith("access-control-")]


def test_cors_preflight_opens_for_configured_origins_only(model_dir):
    ok, other = "https://app.example.org", "https://evil.example"
    with TestClient(create_app(settings_for(model_dir, cors_origins=ok))) as c:
        ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "X-API-Key"}
        pre = c.options("/predict-emotion/", headers={"Origin": ok, **ask})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ok
        assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in pre.headers
        refused = c.options("/predict-emotion/", headers={"Origin": other, **ask})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        assert c.options("/predict-emotion/", headers={"Origin": ok, "Access-Control-Request-Method": "DELETE"}
                         ).status_code == 400


# -- read-only model folder -------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, tuple[int, int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
            for p in sorted(root.rglob("*"))}


def _without_write_power() -> tuple[str, ...]:
    """A root process writes anything; run the server without CAP_DAC_OVERRIDE so permissions hold."""
    if os.geteuid() != 0:
        return ()
    if not shutil.which("setpriv"):
        pytest.skip("running as root without util-linux's setpriv: cannot drop the power to write read-only files")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner")


@pytest.mark.slow
def test_serves_from_a_read_only_model_folder(model_dir, clip, tmp_path):
    ro = tmp_path / "ro-model"
    shutil.copytree(model_dir, ro)
    for p in [*ro.rglob("*"), ro]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    wrapper = _without_write_power()
    probe = subprocess.run([*wrapper, sys.executable, "-c", f"open({str(ro / 'x')!r}, 'w')"], capture_output=True)
    assert probe.returncode != 0 and b"PermissionError" in probe.stderr  # the server below could not write either
    before = _tree(ro)
    try:
        env = {"AUDIO_MODEL_DIR": str(ro), "TEXT_MODEL_DIR": "none", "EMOVOX_TORCH_THREADS": "1"}
        with server_process(env, wrapper=wrapper) as srv:
            r = httpx.post(srv.url + "/predict-emotion/", files={"file": ("a.wav", clip, "audio/wav")})
            assert r.status_code == 200 and r.json()["status"] == "success", r.text
            assert httpx.get(srv.url + "/").json()["models"]["audio"]["name"] == "ro-model"
        assert _tree(ro) == before  # nothing written, nothing touched
    finally:
        for p in [ro, *ro.rglob("*")]:
            p.chmod(stat.S_IRWXU if p.is_dir() else 0o644)


# -- WebSocket stream ---------------------------------------------------------------------------------

def pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def stream_final(client: TestClient, chunks, path: str = "/stream") -> tuple[list[dict], dict]:
    """Send ``chunks`` (answers read after each), then end: -> (updates, final answer)."""
    with client.websocket_connect(path) as ws:
        updates = []
        for c in chunks:
            ws.send_bytes(c)
            updates.append(ws.receive_json())
        ws.send_text(json.dumps({"event": "end"}))
        return updates, ws.receive_json()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the sample offsets ``cuts`` (even byte counts; empty pieces dropped)."""
    edges = [0, *sorted({2 * c for c in cuts if 0 < 2 * c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@pytest.fixture(scope="module")
def one_chunk_finals(client) -> dict[str, dict]:
    speech, zeros = pcm(tone(2.5, seed=3)), bytes(2 * int(2.5 * SR))
    return {"speech": (speech, stream_final(client, [speech])[1]), "zeros": (zeros, stream_final(client, [zeros])[1])}


@FUZZ
@given(which=st.sampled_from(["speech", "zeros"]),
       cuts=st.lists(st.integers(1, int(2.5 * SR) - 1), min_size=1, max_size=12))
def test_any_chunking_gives_the_one_chunk_answer(client, one_chunk_finals, which, cuts):
    data, want = one_chunk_finals[which]
    chunks = split(data, cuts)
    updates, final = stream_final(client, chunks)
    assert len(updates) == len(chunks) and all(u["status"] == "success" and u["final"] is False for u in updates)
    assert final["final"] is True and final["emotion"] == want["emotion"]
    assert final["scores"] == pytest.approx(want["scores"], abs=1e-5)
    assert final["time_s"] == pytest.approx(2.5)
    if which == "zeros":
        assert final.get("silent") is True and all(u.get("silent") is True for u in updates)


def test_odd_byte_counts_are_dropped_and_the_rest_still_matches(client, one_chunk_finals):
    data, want = one_chunk_finals["speech"]
    with client.websocket_connect("/stream") as ws:
        for i, piece in enumerate(split(data, [8000, 8001, 20000])):
            ws.send_bytes(piece)
            assert ws.receive_json()["status"] == "success"
            ws.send_bytes(b"\x01" * (2 * i + 1))  # a stray odd frame between the good ones
            assert ws.receive_json()["code"] == "bad_frame"
        ws.send_text(json.dumps({"event": "end"}))
        assert ws.receive_json()["scores"] == pytest.approx(want["scores"], abs=1e-5)


def test_giant_frame_is_closed_with_1009_and_a_reason(client):
    with client.websocket_connect("/stream") as ws:
        ws.send_bytes(bytes(LIMIT + 2))
        msg = ws.receive_json()
        assert msg["status"] == "error" and "frame too large" in msg["error"] and "EMOVOX_MAX_UPLOAD_MB" in msg["error"]
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
        assert e.value.code == 1009 and "frame too large" in e.value.reason
    with client.websocket_connect("/stream") as ws:  # a text message of the same size
        ws.send_text("x" * (MAX_WS_TEXT_BYTES + 1))
        assert "text message too large" in ws.receive_json()["error"]
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
        assert e.value.code == 1009


def test_deeply_nested_json_text_is_a_bad_message_not_a_crash(client):
    """Regression: '[' * 100000 raised RecursionError in the handler and dropped the connection without a close."""
    with client.websocket_connect("/stream") as ws:
        for text in ("[" * 4000, "{" * 4000, '{"event": ' * 400, "\ud800", "\x00\x01"):
            ws.send_text(text)
            assert ws.receive_json()["code"] == "bad_message"
        ws.send_bytes(bytes(3200))
        assert ws.receive_json()["status"] == "success"


@pytest.fixture(scope="module")
def short_client(model_dir):
    with TestClient(create_app(settings_for(model_dir).replace(max_duration_s=1.5))) as c:
        yield c


@FUZZ
@given(sizes=st.lists(st.integers(1, 12000), min_size=1, max_size=40))
def test_stream_past_its_limit_is_cut_exactly_there(short_client, sizes):
    limit, shortest = int(1.5 * SR), int(MIN_WS_FRAME_S * SR)
    with short_client.websocket_connect("/stream") as ws:
        sent = 0
        for n in itertools.cycle(sizes):
            ws.send_bytes(bytes(2 * n))
            msg = ws.receive_json()
            sent += max(n, shortest)  # a frame shorter than 10 ms counts as 10 ms
            if sent > limit:
                assert "stream too long" in msg["error"]
                with pytest.raises(WebSocketDisconnect) as e:
                    ws.receive_json()
                assert e.value.code == 1009
                return
            assert msg["status"] == "success"


def test_client_vanishing_mid_stream_leaves_the_service_answering(client, clip):
    for _ in range(3):
        with client.websocket_connect("/stream") as ws:
            ws.send_bytes(pcm(tone(1.0)))  # gone without reading its answer or saying goodbye
    with client.websocket_connect("/stream") as ws:
        ws.send_bytes(pcm(tone(0.5)))
        assert ws.receive_json()["status"] == "success"
    assert client.post("/predict-emotion/", files={"file": ("a.wav", clip)}).status_code == 200


# -- the WebSocket over a real socket: giant frames, vanishing and non-reading clients ----------------

def ws_handshake(host: str, port: int) -> socket.socket:
    s = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /stream HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client frame (an all-zero mask: the payload goes out as it is)."""
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536
                                               else bytes([0x80 | 127]) + struct.pack(">Q", n))
    return bytes([0x80 | opcode]) + size + b"\0\0\0\0" + payload


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.slow
def test_websocket_hostile_clients_on_a_real_server(model_dir, clip):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    env = {"AUDIO_MODEL_DIR": str(model_dir), "TEXT_MODEL_DIR": "none", "EMOVOX_TORCH_THREADS": "1",
           "EMOVOX_MAX_UPLOAD_MB": "1", "EMOVOX_MAX_DURATION_S": "600"}
    with server_process(env, log_level="info", uvicorn_args=("--ws-max-size", str(2 * LIMIT))) as srv:
        url = srv.url.replace("http", "ws") + "/stream"
        with connect(url, max_size=None) as ws:  # a frame over EMOVOX_MAX_UPLOAD_MB: an error, then 1009
            ws.send(bytes(LIMIT + 2))
            assert "frame too large" in json.loads(ws.recv(timeout=10))["error"]
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=10)
            assert e.value.rcvd.code == 1009
        # clients that vanish: half a frame then a reset; a whole frame then a reset before the answer
        for data in (ws_frame(bytes(64000))[:30000], ws_frame(bytes(64000))):
            s = ws_handshake(srv.host, srv.port)
            s.sendall(data)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        # a client that sends and never reads: once its answers fill the socket, the server stops reading
        # it (its sends wait), so the client's sends block too; memory stays flat, others are served
        rss0 = rss_mib(srv.process.pid)
        s = ws_handshake(srv.host, srv.port)
        s.settimeout(0.5)
        sent, blocked, frame = 0, 0, ws_frame(bytes(320))  # 10 ms of audio per frame: the most answers per byte
        t_end = time.monotonic() + 6
        while time.monotonic() < t_end:
            try:
                sent += s.send(frame)
            except (TimeoutError, BlockingIOError):
                blocked += 1
        assert blocked > 0 and sent < 60 * 1024 * 1024
        assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 200  # others are served meanwhile
        r = httpx.post(srv.url + "/predict-emotion/", files={"file": ("a.wav", clip)}, timeout=30)
        assert r.status_code == 200
        assert rss_mib(srv.process.pid) - rss0 < 100
        s.close()
        with connect(url) as ws:  # and a normal client after all of them
            ws.send(pcm(tone(1.0)))
            assert json.loads(ws.recv(timeout=10))["status"] == "success"
        time.sleep(0.5)
        log = srv.log()
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]


"""The HTTP service under load and in operation: cross-request batching (answers equal the clip's
answer alone), the bounded queue (503 + Retry-After), per-request timeouts, readiness, Prometheus
metrics and JSON access logs; and the batcher itself, without a model.

The model is blocked on events where a test needs requests to pile up, never slept on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from test_server import make_model_dir, settings_for, voice, wav_bytes  # noqa: E402

from emovox.data.labels import BASIC5, EKMAN7  # noqa: E402
from emovox.inference import load_model  # noqa: E402
from emovox.modelio import ModelLoadError  # noqa: E402
from emovox.server import Settings, SettingsError, create_app  # noqa: E402
from emovox.server.batching import DynamicBatcher, Overloaded  # noqa: E402
from emovox.server.observability import log_config  # noqa: E402
from emovox.server.process import server_process  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("ops") / "tiny-cnn")


@pytest.fixture(scope="module")
def clips():
    """Five clips of different lengths (a batch of them is zero-padded)."""
    return [wav_bytes(voice(s, f0, seed=i)) for i, (s, f0) in enumerate(((1.3, 150), (2.0, 220), (2.7, 120),
                                                                          (3.0, 300), (3.0, 180)))]


def ops_settings(model_dir, **changes):
    return settings_for(model_dir).replace(**changes)


@contextlib.asynccontextmanager
async def running(app):
    """The app with its lifespan run, and an HTTP client on it (in this event loop)."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ac:
            yield ac


async def until(condition, timeout_s=10.0):
    """Wait for a condition of the service's state (not for time to pass)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


def block_model(app):
    """Make the speech model wait in its thread until released; -> (entered, release) events."""
    model = app.state.services.audio
    real, entered, release = model.probabilities, threading.Event(), threading.Event()

    def blocked(*a, **k):
        entered.set()
        assert release.wait(10), "the test never released the model"
        return real(*a, **k)

    model.probabilities = blocked
    return entered, release


def metrics(text):
    """{(sample name, sorted labels): value} from a /metrics body, read with prometheus-client's parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def post(ac, clip, route="/predict-emotion/", field="file", labels=None):
    return ac.post(route, params={"labels": labels} if labels else None, files={field: ("a.wav", clip)})


# -- batching -------------------------------------------------------------------------------------

def test_concurrent_requests_share_one_batch_and_get_their_answers_alone(model_dir, clips):
    """Five requests on three routes, one with labels=basic5, clips of five lengths: one batch of five,
    and every answer equals the library's answer for that clip alone."""
    app = create_app(ops_settings(model_dir, max_batch=5, batch_wait_ms=1000, max_concurrency=1))
    calls = [(clips[0], "/predict-emotion/", "file", None), (clips[1], "/predict-emotion/", "file", "basic5"),
             (clips[2], "/predict-realtime/", "audio_buffer", None), (clips[3], "/api/classify-emotion", "audio", None),
             (clips[4], "/predict-emotion/", "file", None)]

    async def scenario():
        async with running(app) as ac:
            answers = await asyncio.gather(*(post(ac, *c) for c in calls))
            return answers, (await ac.get("/metrics")).text

    answers, exposition = asyncio.run(scenario())
    m = metrics(exposition)
    assert m[("emovox_batch_size_count", ())] == 1 and m[("emovox_batch_size_sum", ())] == 5
    alone = load_model(model_dir, threshold=0.70)
    for (clip, route, _, labels), r in zip(calls, answers):
        assert r.status_code == 200, r.text
        want = alone.predict(clip, labels=labels)
        got = r.json()
        assert got["emotion"] == want.label and got["confidence"] == pytest.approx(want.score, abs=1e-6), route
        if "all_probabilities" in got:
            assert got["all_probabilities"] == pytest.approx(want.scores, abs=1e-6)
    assert list(answers[1].json()["all_probabilities"]) == list(BASIC5)  # folded for that request only


def test_a_full_queue_answers_503_with_retry_after_and_the_service_recovers(model_dir, clips):
    app = create_app(ops_settings(model_dir, max_batch=1, max_concurrency=1, max_queue=2))

    async def scenario():
        async with running(app) as ac:
            entered, release = block_model(app)
            first = asyncio.create_task(post(ac, clips[0]))
            await asyncio.to_thread(entered.wait, 10)  # the first is in the model
            second = asyncio.create_task(post(ac, clips[1]))
            await until(lambda: app.state.batcher.waiting == 1)  # the second waits for a batch
            full = await post(ac, clips[2])
            timeline = await post(ac, clips[2], route="/predict-timeline/")
            release.set()
            done = await asyncio.gather(first, second)
            after = await post(ac, clips[3])
            return full, timeline, done, after, (await ac.get("/metrics")).text

    full, timeline, done, after, exposition = asyncio.run(scenario())
    for r in (full, timeline):
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        body = r.json()
        assert body["status"] == "error" and "overloaded" in body["error"] and "EMOVOX_MAX_QUEUE" in body["error"]
        assert body["detail"]["reason"] == "queue_full" and body["detail"]["retry_after_s"] >= 1
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200
    m = metrics(exposition)
    assert m[("emovox_requests_shed_total", (("reason", "queue_full"),))] == 2
    assert m[("emovox_queue_depth", ())] == 0


def test_a_request_waiting_past_its_timeout_gets_503_and_is_not_run(model_dir, clips):
    app = create_app(ops_settings(model_dir, max_batch=1, max_concurrency=1, request_timeout_s=0.3))

    async def scenario():
        async with running(app) as ac:
            entered, release = block_model(app)
            first = asyncio.create_task(post(ac, clips[0]))
            await asyncio.to_thread(entered.wait, 10)
            queued = await post(ac, clips[1])  # waits behind the blocked one past its 0.3 s
            timed_out_running = await first
            release.set()
            await until(lambda: app.state.batcher.depth == 0 and app.state.batcher._busy == 0)
            after = await post(ac, clips[2])
            return queued, timed_out_running, after, (await ac.get("/metrics")).text

    queued, running_one, after, exposition = asyncio.run(scenario())
    for r in (queued, running_one):
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert "no answer within 0.3 s" in r.json()["error"] and r.json()["detail"]["reason"] == "timeout"
    assert after.status_code == 200
    m = metrics(exposition)
    assert m[("emovox_requests_shed_total", (("reason", "timeout"),))] == 2
    assert m[("emovox_batch_size_count", ())] == 2  # the blocked one and the last: the queued one never ran


# -- readiness, metrics, logs ----------------------------------------------------------------------

def test_readiness_is_503_until_the_models_are_loaded(model_dir, clips, monkeypatch):
    import emovox.server.app as server_app

    real_load, release = server_app.load_services, threading.Event()

    def slow_load(settings):
        assert release.wait(10)
        return real_load(settings)

    monkeypatch.setattr(server_app, "load_services", slow_load)
    app = create_app(ops_settings(model_dir, load_in_background=True))

    async def scenario():
        async with running(app) as ac:
            before = [await ac.get(p) for p in ("/healthz", "/readyz")] + [await post(ac, clips[0])]
            release.set()
            await until(lambda: getattr(app.state, "services", None) is not None)
            return before, [await ac.get("/readyz"), await post(ac, clips[0]), await ac.get("/metrics")]

    (alive, not_ready, refused), (ready, answered, exposition) = asyncio.run(scenario())
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
    for r in (not_ready, refused):
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "still loading" in r.json()["error"]
    assert ready.status_code == 200 and ready.json() == {"status": "ok"} and answered.status_code == 200
    m = metrics(exposition.text)
    assert m[("emovox_model_load_seconds", (("model", "speech"),))] > 0
    assert m[("emovox_requests_shed_total", (("reason", "loading"),))] == 1


def test_a_failed_background_load_fails_both_probes(model_dir, monkeypatch):
    import emovox.server.app as server_app

    def broken(settings):
        raise ModelLoadError("model 'nope' is neither a folder nor a shipped model")

    monkeypatch.setattr(server_app, "load_services", broken)
    app = create_app(ops_settings(model_dir, load_in_background=True))

    async def scenario():
        async with running(app) as ac:
            await until(lambda: getattr(app.state, "load_error", None) is not None)
            return await ac.get("/healthz"), await ac.get("/readyz")

    for r in asyncio.run(scenario()):
        assert r.status_code == 503 and "failed to load" in r.json()["error"] and "'nope'" in r.json()["error"]


def test_metrics_exposition_counts_routes_statuses_latency_and_batches(model_dir, clips):
    with TestClient(create_app(ops_settings(model_dir))) as c:
        assert c.post("/predict-emotion", files={"file": ("a.wav", clips[0])}).status_code == 200  # slash alias
        assert c.post("/predict-emotion/", files={"file": ("a.wav", b"")}).status_code == 400
        assert c.get("/no/such/route").status_code == 404
        r = c.get("/metrics", headers={"X-Request-ID": "probe-1"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.headers["x-request-id"] == "probe-1"
    families = {f.name: f.type for f in text_string_to_metric_families(r.text)}
    assert families["emovox_http_requests"] == "counter" and families["emovox_batch_size"] == "histogram"
    assert families["emovox_http_request_duration_seconds"] == "histogram"
    assert families["emovox_queue_depth"] == "gauge" and families["emovox_model_load_seconds"] == "gauge"
    m = metrics(r.text)
    route = "/predict-emotion/"
    for status in ("200", "400"):
        assert m[("emovox_http_requests_total", (("method", "POST"), ("route", route), ("status", status)))] == 1
    assert m[("emovox_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert m[("emovox_http_request_duration_seconds_count", (("method", "POST"), ("route", route)))] == 2
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in m.items()
                     if k[0] == "emovox_http_request_duration_seconds_bucket" and dict(k[1])["route"] == route)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1] == (float("inf"), 2)
    assert m[("emovox_batch_size_count", ())] == 1 and m[("emovox_queue_depth", ())] == 0
    assert m[("emovox_model_load_seconds", (("model", "speech"),))] > 0


def test_access_log_is_one_json_record_per_request(model_dir, clips, caplog):
    from pythonjsonlogger.json import JsonFormatter

    with caplog.at_level(logging.INFO, logger="emovox.access"), TestClient(create_app(ops_settings(model_dir))) as c:
        r = c.post("/predict-emotion/?api_key=secret", files={"file": ("a.wav", clips[0])})
    records = [rec for rec in caplog.records if rec.name == "emovox.access"]
    assert len(records) == 1 and r.headers["x-request-id"] == records[0].request_id
    spec = {k: v for k, v in log_config()["formatters"]["json"].items() if k != "()"}
    line = json.loads(JsonFormatter(**spec).format(records[0]))
    assert line["logger"] == "emovox.access" and line["level"] == "INFO" and "time" in line
    assert (line["method"], line["path"], line["route"], line["status"]) == ("POST", "/predict-emotion/",
                                                                            "/predict-emotion/", 200)
    assert line["duration_ms"] > 0 and line["bytes"] == len(r.content) and "secret" not in json.dumps(line)


def test_batching_settings_from_environment_and_checked():
    env = {"EMOVOX_MAX_BATCH": "8", "EMOVOX_BATCH_WAIT_MS": "2.5", "EMOVOX_MAX_QUEUE": "10",
           "EMOVOX_REQUEST_TIMEOUT_S": "4", "EMOVOX_LOAD_IN_BACKGROUND": "yes"}
    s = Settings.from_env(env)
    assert (s.max_batch, s.batch_wait_ms, s.max_queue, s.request_timeout_s, s.load_in_background) == (
        8, 2.5, 10, 4.0, True)
    assert Settings.from_env(s.to_env()) == s
    assert Settings.from_env({}).max_batch == 16 and Settings.from_env({}).load_in_background is False
    for bad, words in (({"max_batch": 0}, "max batch"), ({"max_queue": 0}, "max queue"),
                       ({"batch_wait_ms": -1}, "batch wait"), ({"request_timeout_s": 0}, "request timeout")):
        with pytest.raises(SettingsError, match=words):
            Settings(**bad)
    with pytest.raises(SettingsError, match="EMOVOX_LOAD_IN_BACKGROUND"):
        Settings.from_env({"EMOVOX_LOAD_IN_BACKGROUND": "sometimes"})


# -- the batcher alone ------------------------------------------------------------------------------

def _batcher(sizes, **kw):
    def run_batch(items):
        sizes.append(len(items))
        if any(i < 0 for i in items):
            raise ValueError(f"negative item in {items}")
        return [10 * i for i in items]

    return DynamicBatcher(run_batch, **{"max_wait_s": 0.0, "max_queue": 64, **kw})


def test_batcher_shares_waiting_items_between_idle_workers_and_respects_max_batch():
    async def scenario(n, **kw):
        sizes = []
        b = _batcher(sizes, **kw)
        await b.start()
        try:
            return await asyncio.gather(*(b.run(i) for i in range(n))), sizes
        finally:
            await b.close()

    results, sizes = asyncio.run(scenario(4, workers=2, max_batch=8))
    assert results == [0, 10, 20, 30] and sizes == [2, 2]  # two idle workers: half each, not 4 and 0
    results, sizes = asyncio.run(scenario(7, workers=1, max_batch=3))
    assert results == [10 * i for i in range(7)] and sizes == [3, 3, 1]


def test_batcher_a_failing_item_fails_alone():
    async def scenario():
        sizes = []
        b = _batcher(sizes, workers=1, max_batch=4)
        await b.start()
        try:
            return await asyncio.gather(*(b.run(i) for i in (1, -2, 3)), return_exceptions=True), sizes
        finally:
            await b.close()

    (one, bad, three), sizes = asyncio.run(scenario())
    assert (one, three) == (10, 30) and isinstance(bad, ValueError) and sizes == [3, 1, 1, 1]


def test_batcher_admission_is_bounded_and_closing_refuses_work():
    async def scenario():
        b = _batcher([], workers=1, max_queue=1)
        await b.start()
        with b.admit():
            with pytest.raises(Overloaded) as full:
                with b.admit():
                    pass
        assert b.depth == 0 and full.value.reason == "queue_full" and full.value.retry_after_s >= 1
        await b.close()
        with pytest.raises(Overloaded) as closed:
            await b.run(1)
        return closed.value.reason

    assert asyncio.run(scenario()) == "closed"


# -- several worker processes ----------------------------------------------------------------------

def test_two_worker_processes_report_one_set_of_metrics(model_dir, clips):
    """uvicorn --workers 2: whichever worker answers /metrics counts the requests of both."""
    env = {"AUDIO_MODEL_DIR": str(model_dir), "TEXT_MODEL_DIR": "none", "EMOVOX_TORCH_THREADS": "1",
           "EMOVOX_MAX_CONCURRENCY": "1"}
    with server_process(env, workers=2) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for i in range(8):
                with httpx.Client(base_url=srv.url, timeout=30) as fresh:  # new connections spread over workers
                    assert fresh.post("/predict-emotion/", files={"file": ("a.wav", clips[i % 5])}).status_code == 200
            for _ in range(4):
                m = metrics(c.get("/metrics").text)
                key = ("emovox_http_requests_total", (("method", "POST"), ("route", "/predict-emotion/"),
                                                      ("status", "200")))
                assert m[key] == 8 and m[("emovox_batch_size_sum", ())] == 8
            assert c.get("/readyz").status_code == 200 and c.get("/").json()["labels"] == list(EKMAN7)


def test_clips_in_one_batch_are_padded_but_answered_as_alone(model_dir, clips):
    """The batch function itself (what a Ray Serve replica would call): one pass, clip answers as alone."""
    from emovox.server.clips import classify_clips, decode_clip

    model = load_model(model_dir, threshold=0.70)
    jobs = [decode_clip(model, c, labels=None, max_duration_s=10)[0] for c in clips]
    assert len({len(j.wave) for j in jobs}) == 4
    for clip, pred in zip(clips, classify_clips(model, jobs)):
        alone = model.predict(clip)
        assert pred.label == alone.label and np.allclose(list(pred.scores.values()), list(alone.scores.values()),
                                                         atol=1e-6)

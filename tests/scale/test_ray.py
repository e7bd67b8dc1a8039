"""The Ray engine (emovox.scale): ``emovox classify --engine ray`` (Ray Data) against local classify on
real clips and bad files, and the HTTP service on Ray Serve against the same app run locally.

One local Ray (2 CPUs) serves the whole module; the shipped ``crnn`` model keeps it fast. The
command-line errors at the end need no Ray.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

import numpy as np
import pytest

from emovox.cli import main
from emovox.commands.records import FIELDS, RecordWriter, expand_inputs, read_records
from emovox.scale.options import INSTALL_HINT, RayOptions, ServeOptions

ray = pytest.importorskip("ray", reason="the Ray engine's tests need its extra: pip install 'emovox[ray]'")

pytestmark = [pytest.mark.ray,  # Ray's own modules warn about their deprecated settings and pydantic's
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")]

MODEL = "crnn"
#: Scores are rounded to 6 decimals; a clip batched with different neighbours may land on the other side.
TOL = 1.01e-6


@pytest.fixture(scope="module")
def local_ray():
    from emovox.scale.ray_support import ray_session

    with ray_session(RayOptions(num_cpus=2), part="data") as connected:
        yield connected


@pytest.fixture(scope="module")
def inputs(shared_data, tmp_path_factory):
    """~100 real clips (RAVDESS FLAC, CREMA-D Opus) in a manifest, and a folder of bad files."""
    tmp = tmp_path_factory.mktemp("ray_inputs")
    ravdess = sorted((shared_data / "ravdess").glob("Actor_*/*.flac"))[::24][:50]
    crema = sorted((shared_data / "crema-d").glob("*.opus"))[::98][:50]
    manifest = tmp / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(p), "label": "x"}) + "\n" for p in ravdess + crema))
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "not_audio.wav").write_bytes(b"this is not audio\n" * 50)
    (bad / "truncated.flac").write_bytes(ravdess[0].read_bytes()[:3000])
    return [str(manifest), str(bad), str(tmp / "missing.wav")], len(ravdess) + len(crema)


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want):
        if "error" in w:
            assert g == w  # error records are identical
            continue
        assert set(g) == set(w) and g["emotion"] == w["emotion"], (g, w)
        assert set(g["scores"]) == set(w["scores"])
        assert max(abs(g["scores"][k] - w["scores"][k]) for k in w["scores"]) <= TOL
        assert abs(g["confidence"] - w["confidence"]) <= TOL
        assert {k: v for k, v in g.items() if k not in ("scores", "confidence")} == \
               {k: v for k, v in w.items() if k not in ("scores", "confidence")}


# -- batch: Ray Data ------------------------------------------------------------------------------


def test_ray_batch_equals_local_classify(local_ray, inputs, tmp_path, capsys):
    args, n_real = inputs
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.parquet"
    assert main(["classify", "--model", MODEL, *args, "--output", str(local)]) == 1  # bad files: exit 1
    assert "4 of 104 file(s) could not be classified" in capsys.readouterr().err
    assert main(["classify", "--model", MODEL, "--engine", "ray", "--ray-actors", "2", *args,
                 "--output", str(on_ray)]) == 1
    assert "4 of 104 file(s) could not be classified" in capsys.readouterr().err
    want, got = read_records(local), read_records(on_ray)
    assert len(want) == n_real + 4 == len(got)
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in want if "error" in r}
    assert set(errors) == {"empty.wav", "not_audio.wav", "truncated.flac", "missing.wav"}
    assert "empty file" in errors["empty.wav"] and "no such file" in errors["missing.wav"]
    assert_same_records(got, want)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(on_ray)  # one row per clip, a column per record field
    assert table.num_rows == n_real + 4 and table.column_names == [*FIELDS, "error"]
    assert pa.types.is_map(table.schema.field("scores").type)


def test_ray_batch_jsonl_with_options(local_ray, inputs, tmp_path, capsys):
    """--labels, --top-k and --fields reach the actors; the jsonl file equals what local classify prints."""
    from emovox.data.labels import TAXONOMIES

    args, _ = inputs
    paths = expand_inputs(args)[::5]  # 21 of them, an error included
    opts = ["--labels", "basic5", "--top-k", "3", "--fields", "emotion,confidence,scores"]
    on_ray = tmp_path / "ray.jsonl"
    capsys.readouterr()
    main(["classify", "--model", MODEL, *paths, *opts, "--format", "jsonl"])
    want = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    main(["classify", "--model", MODEL, "--engine", "ray", "--ray-actors", "1", *paths, *opts,
          "--output", str(on_ray), "--batch-size", "4"])
    got = read_records(on_ray)
    assert len(got) == len(want) == len(paths) and sum("error" in r for r in got) == 1
    assert all(set(r) <= {"emotion", "confidence", "scores", "error"} for r in got)
    assert all(len(r["scores"]) == 3 and set(r["scores"]) <= set(TAXONOMIES["basic5"])
               for r in got if "error" not in r)
    for g, w in zip(got, want):  # no path field: compare in order
        assert g.keys() == w.keys() and g.get("error") == w.get("error") and g.get("emotion") == w.get("emotion")
        if "scores" in w:
            assert g["scores"].keys() == w["scores"].keys()
            assert max(abs(g["scores"][k] - v) for k, v in w["scores"].items()) <= TOL


# -- serving: Ray Serve -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(local_ray):
    """The service on Ray Serve (2 replicas) through ``serve_forever`` (what ``emovox serve --engine ray``
    runs), and the same app in this process as the reference."""
    httpx = pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from emovox.scale.ray_serve import serve_forever
    from emovox.server import Settings, create_app

    settings = Settings(model=MODEL, text_model="none", max_duration_s=30.0, max_upload_mb=2.0)
    options = ServeOptions(port=_free_port(), replicas=2, cpus_per_replica=0.5, name="emovox-test")
    stop, failed = threading.Event(), []

    def run():
        try:
            serve_forever(settings, options, RayOptions(), stop=stop)
        except BaseException as e:  # noqa: BLE001 - reported by the fixture
            failed.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{options.port}"
    deadline = time.monotonic() + 240
    while True:
        assert not failed, failed
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the Serve deployment did not become ready"
        time.sleep(0.5)
    with TestClient(create_app(settings)) as reference:
        yield url, reference
    stop.set()
    thread.join(timeout=120)
    assert not failed, failed


@pytest.fixture(scope="module")
def clips(shared_data):
    return [p.read_bytes() for p in (sorted((shared_data / "ravdess").glob("Actor_0[12]/*.flac"))[::20][:3]
                                     + sorted((shared_data / "crema-d").glob("*.opus"))[::700][:3])]


def _close(got: dict, want: dict) -> None:
    probs = want.pop("all_probabilities", None)
    gotp = got.pop("all_probabilities", None)
    assert abs(got.pop("confidence") - want.pop("confidence")) <= 1e-5
    assert got == want
    if probs is not None:
        assert gotp.keys() == probs.keys() and max(abs(gotp[k] - v) for k, v in probs.items()) <= 1e-5


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/emotions/", "/emotions/?labels=basic5",
                                  "/music-moods/", "/emotions/?labels=nope"])
def test_serve_answers_gets_like_the_local_app(served, path):
    import httpx

    url, reference = served
    got, want = httpx.get(url + path, timeout=30), reference.get(path)
    assert got.status_code == want.status_code
    assert got.json() == want.json()


@pytest.mark.parametrize("route,field", [("/predict-emotion/", "file"), ("/predict-realtime/", "audio_buffer"),
                                         ("/api/classify-emotion", "audio"), ("/predict-emotion", "file")])
def test_serve_classifies_like_the_local_app(served, clips, route, field):
    import httpx

    url, reference = served
    for clip in clips[:3] if field != "file" else clips:
        got = httpx.post(url + route, files={field: ("clip", clip)}, timeout=60)
        want = reference.post(route, files={field: ("clip", clip)})
        assert got.status_code == want.status_code == 200, got.text
        _close(got.json(), want.json())


def test_serve_batches_concurrent_requests_and_refuses_bad_ones(served, clips):
    """Concurrent uploads go through @serve.batch: each answer is the clip's own; bad uploads get the
    local app's status and message; /metrics is the service's."""
    import asyncio

    import httpx

    url, reference = served
    want = [reference.post("/predict-emotion/?labels=basic5", files={"file": ("c", c)}).json() for c in clips]

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/predict-emotion/?labels=basic5", files={"file": ("c", c)})
                                          for c in clips * 3))

    for i, r in enumerate(asyncio.run(burst())):
        assert r.status_code == 200
        _close(r.json(), dict(want[i % len(clips)]))
    for body, status in ((b"", 400), (b"not audio at all" * 20, 415), (clips[0][:3000], 400)):
        got = httpx.post(url + "/predict-emotion/", files={"file": ("c", body)}, timeout=30)
        ref = reference.post("/predict-emotion/", files={"file": ("c", body)})
        assert got.status_code == ref.status_code == status and got.json() == ref.json()
    metrics = httpx.get(url + "/metrics", timeout=30).text
    assert "emovox_batch_size_count" in metrics and 'route="/predict-emotion/"' in metrics


def test_serve_streams_over_websocket(served, clips):
    """``WS /stream`` passes through Ray Serve's proxy: the final answer is the local app's."""
    from websockets.sync.client import connect

    from emovox.audio import load_audio

    url, reference = served
    pcm = (np.clip(load_audio(clips[0], sample_rate_hz=16000), -1, 1) * 32767).astype("<i2").tobytes()
    finals = []
    with connect(url.replace("http", "ws") + "/stream", open_timeout=30) as ws:
        for i in range(0, len(pcm), 32000):
            ws.send(pcm[i:i + 32000])
            assert json.loads(ws.recv(timeout=30))["status"] == "success"
        ws.send(json.dumps({"event": "end"}))
        finals.append(json.loads(ws.recv(timeout=30)))
    with reference.websocket_connect("/stream") as ws:
        for i in range(0, len(pcm), 32000):
            ws.send_bytes(pcm[i:i + 32000])
            ws.receive_json()
        ws.send_text(json.dumps({"event": "end"}))
        finals.append(ws.receive_json())
    got, want = finals
    assert got["final"] is want["final"] is True and got["emotion"] == want["emotion"]
    assert np.allclose(got["confidence"], want["confidence"], atol=1e-5)


# -- errors, options, no Ray needed ----------------------------------------------------------------


def test_classify_errors_are_one_clear_line(tmp_path, capsys):
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"")
    bad_manifest = tmp_path / "m.jsonl"
    bad_manifest.write_text('{"path": "a.wav"}\nnot json\n')
    no_path = tmp_path / "m.csv"
    no_path.write_text("file,label\na.wav,angry\n")
    (tmp_path / "empty").mkdir()
    cases = [
        (["classify", str(clip), "--output", "out.csv"], "--output 'out.csv': unknown extension '.csv'; use .jsonl or .parquet"),
        (["classify", str(bad_manifest)], f"manifest '{bad_manifest}' line 2: not JSON"),
        (["classify", str(no_path)], "its header has no 'path' column"),
        (["classify", str(tmp_path / "gone.jsonl")], "cannot read the manifest"),
        (["classify", str(tmp_path / "empty")], "no audio files found"),
        (["classify", str(clip), "--engine", "ray", "--timeline"], "--engine ray classifies whole clips"),
        (["classify", str(clip), "--timeline", "--output", "t.jsonl"], "write timelines with --format json"),
        (["classify", str(clip), "--output", str(tmp_path / "no" / "r.jsonl")], "no such folder"),
        (["classify", str(clip), "--engine", "ray", "--model", "no-such-model"], "neither a folder nor a shipped model"),
        (["serve", "--engine", "ray", "--replicas", "0"], "--replicas must be at least 1"),
        (["serve", "--engine", "ray", "--workers", "2"], "with --engine ray use --replicas"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_manifest_paths_are_relative_to_the_manifest(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.flac").write_bytes(b"")
    (tmp_path / "m.csv").write_text("path,label\nsub/x.flac,angry\n/abs/y.wav,sad\n\n")
    monkeypatch.chdir(tmp_path.parent)
    assert expand_inputs([str(tmp_path / "m.csv")]) == [str(tmp_path / "sub" / "x.flac"), "/abs/y.wav"]


def test_without_ray_the_message_names_the_extra(monkeypatch, tmp_path, capsys):
    from emovox.scale.ray_support import RayMissing, require_ray

    clip = tmp_path / "a.wav"
    clip.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    with pytest.raises(RayMissing, match=r"pip install 'emovox\[ray\]'"):
        require_ray("serve")
    assert main(["classify", str(clip), "--engine", "ray", "--model", MODEL]) == 2
    assert INSTALL_HINT in capsys.readouterr().err


def test_record_files_round_trip(tmp_path):
    records = [{"path": "a.wav", "emotion": "sad", "confidence": 0.5, "scores": {"sad": 0.5, "calm": 0.25},
                "music_mood": "melancholic", "low_confidence": True, "warning": "w", "silent": True,
                "unsupported_labels": ["calm"]},
               {"path": "b.wav", "error": "'b.wav': empty file (0 bytes)"}]
    for name in ("r.parquet", "r.jsonl"):
        with RecordWriter(tmp_path / name) as out:
            out.write(records)
        assert read_records(tmp_path / name) == records and out.count == 2
    with pytest.raises(RuntimeError), RecordWriter(tmp_path / "half.parquet") as out:
        out.write(records)
        raise RuntimeError("stopped")
    assert not (tmp_path / "half.parquet").exists() and not list(tmp_path.glob(".*partial"))


def test_serve_deployment_options():
    from emovox.scale.ray_serve import deployment_options
    from emovox.server import Settings

    st = Settings(model=MODEL, max_batch=8, max_queue=32)
    fixed = deployment_options(st, ServeOptions(replicas=3))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] > 32 and fixed["ray_actor_options"] == {"num_cpus": 1.0}
    auto = deployment_options(st, ServeOptions(replicas=2, max_replicas=6))["autoscaling_config"]
    assert auto == {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 8.0}
    with pytest.raises(ValueError, match="--max-replicas"):
        ServeOptions(min_replicas=4, max_replicas=2)


def test_serve_app_builder_for_serve_run_and_kuberay():
    from ray.serve import Application

    from emovox.scale.ray_serve import app_builder

    app = app_builder({"AUDIO_MODEL_DIR": MODEL, "TEXT_MODEL_DIR": "none", "EMOVOX_MAX_BATCH": "8",
                       "replicas": "2", "max_replicas": "4"})
    assert isinstance(app, Application)
    with pytest.raises(ValueError, match="unknown argument.*replica_count"):
        app_builder({"replica_count": 2})
    with pytest.raises(ValueError, match="EMOVOX_MAX_BATCH"):
        app_builder({"EMOVOX_MAX_BATCH": "lots"})

"""The shipped models on ONNX Runtime: parity with PyTorch, no torch on the inference paths, the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emovox.audio import load_audio
from emovox.inference import load_model, resolve_model_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ravdess_03-01-05-02-01-01-12.flac"
SHIPPED = ("default", "crnn", "streaming", "fast")


def _real_clips(shared_data: Path) -> list[np.ndarray]:
    files = sorted((shared_data / "ravdess" / "Actor_03").glob("*.flac"))[:2] + \
        sorted((shared_data / "crema-d").glob("1002_*.opus"))[:2]
    return [load_audio(f, sample_rate_hz=16000) for f in files]


@pytest.fixture(scope="module")
def models():
    return {name: (load_model(name, backend="onnx"), load_model(name, backend="torch")) for name in SHIPPED}


@pytest.mark.realdata
@pytest.mark.parametrize("name", SHIPPED)
def test_onnx_runtime_equals_pytorch_on_real_clips(models, shared_data, name):
    """Every shipped model's runtime graph gives PyTorch's logits within 1e-3, for clips of several lengths
    (shorter than the encoder's minimum, a second, the clip, 12 s) alone and in batches (equal and mixed lengths)."""
    onnx_model, torch_model = models[name]
    assert type(onnx_model.backend).__name__ == "OnnxModel" and type(torch_model.backend).__name__ == "TorchBackend"
    clips = _real_clips(shared_data)
    lengths = (400, 16000, None, 12 * 16000)
    waves = [np.resize(c, n) if n else c for c in clips[:2] for n in lengths] + clips[2:]
    for w in waves:  # one clip at a time
        a = onnx_model.backend.predict_logits(w[None])
        b = torch_model.backend.predict_logits(w[None])
        assert np.abs(a - b).max() < 1e-3, (name, len(w))
    batch = np.stack([np.resize(c, 3 * 16000) for c in clips])  # equal lengths, one run
    assert np.abs(onnx_model.backend.predict_logits(batch) - torch_model.backend.predict_logits(batch)).max() < 1e-3
    p_onnx, p_torch = onnx_model.probabilities(waves), torch_model.probabilities(waves)  # mixed lengths, padded
    assert np.abs(p_onnx - p_torch).max() < 1e-3


@pytest.mark.realdata
def test_long_clip_runs_in_windows(models, shared_data):
    """Past the encoder's 30 s the runtime runs 30-s windows and averages their logits weighted by the samples
    each adds (runtime.json's ``long_clips``); PyTorch stitches the encoder's states instead and takes the
    log-mel range of the whole clip, so the two differ a little there but give the same answer."""
    onnx_model, torch_model = models["default"]
    clip = np.concatenate(_real_clips(shared_data) * 6)[: 45 * 16000]
    size = onnx_model.backend.max_samples
    assert len(clip) > size
    logits = onnx_model.backend.predict_logits(clip[None])[0]
    first, last = (onnx_model.backend.predict_logits(w[None])[0] for w in (clip[:size], clip[-size:]))
    np.testing.assert_allclose(logits, (size * first + (len(clip) - size) * last) / len(clip), atol=1e-4)
    assert onnx_model.probabilities([clip])[0].argmax() == torch_model.probabilities([clip])[0].argmax()


@pytest.fixture(scope="module")
def batched_default(tmp_path_factory):
    """The default model's padded-batch graph (``lengths`` input); the shipped one runs one clip length per run."""
    import shutil

    from emovox.export.runtime_build import build_runtime
    from emovox.runtime.onnx_backend import OnnxModel

    folder = tmp_path_factory.mktemp("batched") / "default"
    shutil.copytree(resolve_model_path("default")[1], folder, ignore=shutil.ignore_patterns("onnx"))
    return OnnxModel(build_runtime(folder, lengths_input=True))


@pytest.mark.realdata
def test_default_padded_batch_gives_each_clip_its_answer_alone(models, shared_data, batched_default):
    """The default's padded-batch graph runs a zero-padded batch of mixed lengths once, and each clip gets its
    logits (within 1e-4) and pooled features alone, on the shipped one-length graph and on its own graph: the
    log-mel reflected at the clip's own end with its own floor, no padding through the encoder's convolutions or
    attention, pooling over its own frames. Clips under the encoder's 400 samples and past its 30 s are in the
    mixes; a whole clip gets exactly the shipped graph's numbers."""
    shipped = models["default"][0].backend
    assert batched_default.lengths_input and not shipped.lengths_input
    assert shipped.runtime["intra_op_spinning"] is False
    files = sorted(EXAMPLE.parent.glob("*.flac")) + sorted(EXAMPLE.parent.glob("*.opus")) + \
        sorted((shared_data / "ravdess" / "Actor_06").glob("*.flac"))[::7][:3] + \
        sorted((shared_data / "crema-d").glob("1004_*.opus"))[::9][:3]
    clips = [load_audio(f, sample_rate_hz=16000) for f in files]
    np.testing.assert_array_equal(batched_default.predict_logits(clips[0]), shipped.predict_logits(clips[0]))
    mixes = [clips, [c[:n] for c, n in zip(clips, (300, 401, 999, 16000, 16161, 16319, 32001, 40000))],
             [np.resize(clips[0], 31 * 16000), clips[1][:777], clips[2], np.resize(clips[3], 12 * 16000)]]
    for mix in mixes:
        lengths = np.array([len(c) for c in mix])
        batch = np.zeros((len(mix), lengths.max()), np.float32)
        for i, c in enumerate(mix):
            batch[i, : len(c)] = c
        logits = batched_default.predict_logits(batch, lengths)
        pooled = batched_default.pooled_features(batch, lengths)
        for i, c in enumerate(mix):
            alone = shipped.predict_logits(c[None])[0]
            assert np.abs(logits[i] - alone).max() < 1e-4, len(c)
            assert np.abs(logits[i] - batched_default.predict_logits(c[None])[0]).max() < 1e-4, len(c)
            rows = shipped.pooled_features(c[None])[0]
            assert np.abs(pooled[i] - rows).max() < 1e-4 * np.abs(rows).max(), len(c)


class _Recorder:
    """A session stand-in that runs the real one and notes which thread ran each clip length."""

    def __init__(self, inner):
        self.inner, self.threads, self.widths = inner, [], []

    def run(self, outputs, feed):
        import threading

        self.threads.append(threading.get_ident())
        self.widths.append(feed["waveform"].shape[1])
        return self.inner.run(outputs, feed)


@pytest.mark.realdata
def test_clip_lengths_run_at_once_with_the_answers_of_one_after_another(shared_data, tmp_path):
    """``predict_batch`` on the default model runs its clip lengths two at a time, each on the 1-thread session,
    and gives every clip, in its place, bit for bit what the same session gives one length after another; an
    unreadable clip's error stays in its place (``errors="return"``). Against the 2-thread session (one clip
    alone, as ``predict`` runs) only float rounding differs. Mixed lengths: under the encoder's 400 samples, two
    clips of one length (one run), RAVDESS, CREMA-D, and past 30 s (windows)."""
    import soundfile as sf

    from emovox.audio import AudioError
    from emovox.inference import EmotionModel
    from emovox.runtime.onnx_backend import OnnxModel

    folder = resolve_model_path("default")[1] / "onnx"
    files = [EXAMPLE] + sorted((shared_data / "ravdess" / "Actor_05").glob("*.flac"))[::9][:3] + \
        sorted((shared_data / "crema-d").glob("1005_*.opus"))[::11][:3]
    bad, short, long = tmp_path / "broken.wav", tmp_path / "short.wav", tmp_path / "long.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    sf.write(short, load_audio(files[1], sample_rate_hz=16000)[5000:5300], 16000)
    sf.write(long, np.resize(load_audio(files[2], sample_rate_hz=16000), 31 * 16000), 16000)
    sources = [files[0], bad, *files[1:4], short, files[1], *files[4:], long]
    at_once = OnnxModel(folder, threads=2)
    assert at_once.clip_workers == 2
    recorder = at_once.worker_session = _Recorder(at_once.worker_session)
    one_by_one, two_threads = OnnxModel(folder, threads=2), OnnxModel(folder, threads=2)
    one_by_one.clip_workers = two_threads.clip_workers = 1
    one_by_one.session = recorder.inner  # the same 1-thread session, one length after another
    got = EmotionModel(at_once).predict_batch(sources, errors="return", batch_size=16)
    # a run per length (the file given twice is one), 2 for the 31-s clip's windows, on both workers
    assert len(set(recorder.threads)) == 2 and len(recorder.widths) == 10 and max(recorder.widths) == 480000
    for ref in (EmotionModel(one_by_one), EmotionModel(two_threads)):
        want = ref.predict_batch(sources, errors="return", batch_size=16)
        for i, (a, b) in enumerate(zip(got, want)):
            if i == 1:
                assert isinstance(a, AudioError) and str(a) == str(b) and "broken.wav" in str(a)
                continue
            assert a.label == b.label and a.quality == b.quality, i
            if ref.backend is one_by_one:
                assert a.scores == b.scores, i
            np.testing.assert_allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-5)
    assert got[0].label == "angry" and got[2].scores == got[6].scores  # one file twice: one run, one answer
    assert got[2].label == EmotionModel(two_threads).predict(files[1]).label


def test_default_graph_holds_no_encoder_weights_and_names_them():
    import onnx
    from onnx.external_data_helper import uses_external_data

    folder = resolve_model_path("default")[1] / "onnx"
    manifest = json.loads((folder / "runtime.json").read_text())
    assert manifest["external_weights"]["backbone"] == "whisper-base"
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    external = [t for t in graph.graph.initializer if uses_external_data(t)]
    assert len(external) >= 90 and all(t.name.startswith("whisper_encoder.") for t in external)
    assert (folder / "model.onnx").stat().st_size < 2_000_000


def test_a_damaged_cached_graph_is_built_again(tmp_path, monkeypatch):
    from emovox.runtime import onnx_backend
    from emovox.runtime.onnx_materialise import materialise

    monkeypatch.setenv("EMOVOX_CACHE_DIR", str(tmp_path))
    folder = resolve_model_path("default")[1] / "onnx"
    manifest = json.loads((folder / "runtime.json").read_text())
    built = materialise(folder / "model.onnx", manifest)
    assert built.parent == tmp_path / "onnx" and built.stat().st_size > 50_000_000
    assert materialise(folder / "model.onnx", manifest) == built  # cached: the same file
    built.write_bytes(built.read_bytes()[:1000])  # truncated
    monkeypatch.setattr(onnx_backend, "_SESSIONS", {})
    m = onnx_backend.OnnxModel(folder)
    assert m.predict_logits(load_audio(EXAMPLE, sample_rate_hz=16000)[None]).argmax() == m.labels.index("angry")
    assert built.stat().st_size > 50_000_000


def test_a_corrupt_runtime_manifest_is_named(tmp_path):
    from emovox.runtime.onnx_backend import OnnxModel, OnnxModelError

    (tmp_path / "runtime.json").write_text("{not json")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(OnnxModelError, match="runtime.json: unreadable runtime manifest"):
        OnnxModel(tmp_path)


def test_classify_stream_and_api_never_import_torch(tmp_path):
    """A fresh interpreter runs `emovox classify`, `emovox stream` and the Python API on the shipped models
    through ONNX Runtime, and torch is never imported."""
    wav = tmp_path / "clip.wav"
    import soundfile as sf

    sf.write(wav, load_audio(EXAMPLE, sample_rate_hz=16000), 16000)
    script = f"""
import sys, json, contextlib, io
from emovox.cli import main
import emovox
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["classify", {str(EXAMPLE)!r}, "--format", "jsonl"]) == 0
    assert main(["stream", {str(wav)!r}, "--model", "streaming"]) == 0
    assert main(["stream", {str(wav)!r}]) == 0
m = emovox.load_model()
p = m.predict({str(EXAMPLE)!r})
batch = m.predict_batch([{str(EXAMPLE)!r}, {str(wav)!r}])
t = m.timeline({str(EXAMPLE)!r}, window_s=2.0, hop_s=1.0)
s = emovox.load_model("streaming").stream()
for i in range(0, 16000, 1600):
    s.push(m.load({str(wav)!r})[i:i + 1600])
print(json.dumps({{"torch": "torch" in sys.modules, "emotion": p.label, "n": len(batch), "segments": len(t.segments),
                  "lines": out.getvalue().count(chr(10)), "final": s.finish()["emotion"]}}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    assert got["emotion"] == "angry" and got["n"] == 2 and got["segments"] >= 1 and got["lines"] >= 3


def test_the_server_answers_speech_without_torch():
    """`emovox serve`'s app on the shipped default model (text switched off) classifies an upload through
    ONNX Runtime, and torch is never imported."""
    script = f"""
import sys, json
from fastapi.testclient import TestClient
from emovox.server.app import create_app
from emovox.server.settings import Settings
with TestClient(create_app(Settings(text_model="none", use_mock_models=False))) as c:
    with open({str(EXAMPLE)!r}, "rb") as f:
        r = c.post("/predict-emotion/", files={{"file": ("clip.flac", f, "audio/flac")}})
print(json.dumps({{"torch": "torch" in sys.modules, "status": r.status_code, "body": r.json()}}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["status"] == 200, got
    assert got["torch"] is False
    assert got["body"]["emotion"] == "angry"


def test_export_runtime_makes_a_trained_model_run_on_onnx_runtime(tmp_path):
    """`emovox export --model M --runtime` writes M/onnx; load_model then runs it on ONNX Runtime with
    PyTorch's answers."""
    from emovox.cli import main
    from emovox.testing import create_model

    folder = create_model(tmp_path / "m")
    assert load_model(folder).backend.__class__.__name__ == "TorchBackend"  # no graphs yet
    assert main(["export", "--model", str(folder), "--runtime"]) == 0
    onnx_model, torch_model = load_model(folder), load_model(folder, backend="torch")
    assert type(onnx_model.backend).__name__ == "OnnxModel"
    wave = load_audio(EXAMPLE, sample_rate_hz=16000)
    np.testing.assert_allclose(onnx_model.probabilities([wave]), torch_model.probabilities([wave]), atol=1e-4)


@pytest.mark.realdata
def test_int8_graph_is_shipped_only_where_it_agrees_with_float(shared_data):
    """The quantised graph's agreement check: the int8 build of the default model loads and runs; the shipped
    manifest may ask for int8 only if its top-1 agreement with float32 is at least 99 % (on 24 real clips here;
    `python -m benchmarks.onnx_runtime quant` measures all 1149 validation clips: 77.5 %, so it ships float32)."""
    from emovox.runtime.onnx_backend import session
    from emovox.runtime.onnx_materialise import materialise, quantised_graph_ships

    folder = resolve_model_path("default")[1] / "onnx"
    manifest = json.loads((folder / "runtime.json").read_text())
    graphs = {q: materialise(folder / "model.onnx", {**manifest, "quantization": q}) for q in ("none", "int8")}
    assert graphs["int8"].stat().st_size < 0.4 * graphs["none"].stat().st_size  # the encoder's matrices are int8
    files = sorted((shared_data / "ravdess" / "Actor_04").glob("*.flac"))[::5][:12] + \
        sorted((shared_data / "crema-d").glob("1003_*.opus"))[::6][:12]
    top = {q: [] for q in graphs}
    for f in files:
        w = load_audio(f, sample_rate_hz=16000)[None]
        for q, g in graphs.items():
            feed = {"waveform": w, "lengths": np.array([w.shape[1]])} if manifest.get("lengths_input") else {"waveform": w}
            top[q].append(int(session(g).run(None, feed)[0].argmax()))
    agreement = float(np.mean(np.array(top["int8"]) == np.array(top["none"])))
    assert manifest["quantization"] in ("none", "int8")
    assert manifest["quantization"] == "none" or quantised_graph_ships(agreement), agreement
    assert quantised_graph_ships(0.99, 0.70, 0.696) and not quantised_graph_ships(0.989)
    assert not quantised_graph_ships(1.0, 0.700, 0.694)  # the UAR within 0.5 point


@pytest.mark.parametrize("final_answer", ["last", "mean"])
def test_streaming_updates_equal_on_both_runtimes(models, final_answer):
    """The shipped LSTM streamed frame by frame on ONNX Runtime gives PyTorch's update at every chunk (odd chunk
    sizes, a run of zeros in the middle: all-zero frames are skipped on both)."""
    onnx_model, torch_model = models["streaming"]
    wave = load_audio(EXAMPLE, sample_rate_hz=16000)
    wave = np.concatenate([wave[:16000], np.zeros(4000, np.float32), wave[16000:]])
    sessions = [m.stream(final_answer=final_answer) for m in (onnx_model, torch_model)]
    start, sizes = 0, [137, 1600, 3, 5000, 911]
    while start < len(wave):
        chunk = wave[start : start + sizes[start % len(sizes)]]
        start += len(chunk)
        a, b = (s.push(chunk)[-1] for s in sessions)
        assert a["frames"] == b["frames"]
        np.testing.assert_allclose(a["confidence"], b["confidence"], atol=1e-4)
    assert sessions[0].finish()["emotion"] == sessions[1].finish()["emotion"]


def test_main_job_runs_where_training_packages_cannot_be_imported():
    """The README's main job (`emovox classify` on the example clip) in a process where torch, scikit-learn,
    matplotlib, safetensors and PyYAML cannot be imported — what the base install has — prints the README's answer.
    (`make demo` on a fresh clone installs that base for real.)"""
    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "sklearn", "matplotlib", "safetensors", "yaml"):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from emovox.cli import main
sys.exit(main(["classify", {str(EXAMPLE)!r}, "--format", "json"]))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("```json", readme.index("make demo")) + 7:]
    expected = json.loads(block[: block.index("```")])
    assert {k: v for k, v in got.items() if k != "path"} == {k: v for k, v in expected.items() if k != "path"}


def test_training_without_its_extra_names_the_install():
    script = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from emovox.cli import main
sys.exit(main(["train", "--help"]))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2
    assert "pip install 'emovox[train]'" in res.stderr and "torch" in res.stderr


def test_export_runtime_refusing_a_model_leaves_its_folder_as_it_was(tmp_path, capfd):
    """A model the runtime build cannot take (a stream whose centred frames reach into their neighbours) gets a
    clear error, and only that (no torch exporter warning before it), and the model folder gains no half-written
    graphs or temporary folders."""
    from emovox.cli import main
    from emovox.testing import create_model

    folder = create_model(tmp_path / "m", name="lstm", features="mfcc13")
    before = sorted(p.name for p in folder.iterdir())
    capfd.readouterr()
    assert main(["export", "--model", str(folder), "--runtime"]) == 2
    err = capfd.readouterr().err
    assert "frame-local features" in err and "PackPadded" not in err and "Warning" not in err, err
    assert sorted(p.name for p in folder.iterdir()) == before
    assert load_model(folder).backend.__class__.__name__ == "TorchBackend"

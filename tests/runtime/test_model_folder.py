"""A model folder is one model: its runtime graph records the weights and config it was built from, a stale graph
is never used, `emovox adapt` rebuilds it, and `classify --adapt` equals adapting into a folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import emovox
from emovox.errors import AdaptationError, ModelLoadError
from emovox.inference import resolve_model_path
from emovox.runtime.onnx_backend import stale_reason

EXAMPLE = "examples/ravdess_03-01-05-02-01-01-12.flac"


@pytest.mark.parametrize("name", ["default", "crnn", "fast", "streaming"])
def test_every_shipped_graph_records_the_files_it_was_built_from(name):
    assert stale_reason(resolve_model_path(name)[1]) is None


@pytest.fixture()
def crnn_copy(tmp_path):
    dest = tmp_path / "crnn"
    shutil.copytree(resolve_model_path("crnn")[1], dest)
    return dest


def test_a_changed_config_makes_the_graph_stale(crnn_copy):
    cfg = json.loads((crnn_copy / "model_config.json").read_text())
    cfg["temperature"] = float(cfg.get("temperature", 1.0)) * 3
    (crnn_copy / "model_config.json").write_text(json.dumps(cfg))
    assert "model_config.json" in stale_reason(crnn_copy)
    with pytest.raises(ModelLoadError, match="emovox export --model .* --runtime"):
        emovox.load_model(crnn_copy, backend="onnx")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = emovox.load_model(crnn_copy)  # auto: PyTorch answers, with a warning
    assert type(model.backend).__name__ == "TorchBackend"
    assert any("answering with PyTorch" in str(w.message) for w in seen)


def test_a_graph_without_its_record_is_not_trusted(crnn_copy):
    manifest = crnn_copy / "onnx" / "runtime.json"
    data = json.loads(manifest.read_text())
    del data["built_from"]
    manifest.write_text(json.dumps(data))
    assert "older emovox" in stale_reason(crnn_copy)
    with pytest.raises(ModelLoadError):
        emovox.load_model(crnn_copy, backend="onnx")


@pytest.fixture(scope="module")
def domain_clips(shared_data):
    clips = sorted(str(p) for p in (shared_data / "ravdess" / "Actor_19").glob("*.flac"))[:32]
    assert len(clips) == 32
    return clips


def test_adapted_folder_graph_agrees_with_its_weights_and_with_classify_adapt(tmp_path, domain_clips):
    from emovox.training.adaptation import adapt_model

    out = tmp_path / "adapted"
    adapt_model("default", domain_clips, out, cache=tmp_path / "cache", progress=False)
    assert stale_reason(out) is None  # adapt rebuilt the graph
    onnx_model = emovox.load_model(out)
    torch_model = emovox.load_model(out, backend="torch")
    assert type(onnx_model.backend).__name__ == "OnnxModel"
    a = np.array([list(p.scores.values()) for p in onnx_model.predict_batch(domain_clips[:4])])
    b = np.array([list(p.scores.values()) for p in torch_model.predict_batch(domain_clips[:4])])
    np.testing.assert_allclose(a, b, atol=1e-3)  # the adapted standardisation is in the graph
    shipped = np.array([list(p.scores.values()) for p in emovox.load_model().predict_batch(domain_clips[:4])])
    assert np.abs(a - shipped).max() > 1e-3  # and it is not the shipped default's
    inline = emovox.load_model().predict_batch(domain_clips, adapt=True)
    c = np.array([list(p.scores.values()) for p in inline[:4]])
    np.testing.assert_allclose(c, a, atol=0.02)  # the same statistics (float16 cached states in adapt)
    assert [p.label for p in inline[:4]] == [p.label for p in onnx_model.predict_batch(domain_clips[:4])]


def test_classify_adapt_refuses_too_few_clips_and_models_without_pooled_features(domain_clips):
    with pytest.raises(AdaptationError, match="at least 30"):
        emovox.load_model().predict_batch(domain_clips[:5], adapt=True)
    with pytest.raises(AdaptationError, match="pooled features"):
        emovox.load_model("crnn").predict_batch(domain_clips, adapt=True)


def test_classify_adapt_cli(domain_clips):
    run = subprocess.run([sys.executable, "-m", "emovox.cli", "classify", *domain_clips[:3], "--adapt"],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "at least 30" in run.stderr
    run = subprocess.run([sys.executable, "-m", "emovox.cli", "classify", *domain_clips, "--adapt", "--engine",
                          "ray"], capture_output=True, text=True)
    assert run.returncode == 2 and "runs locally" in run.stderr
    run = subprocess.run([sys.executable, "-m", "emovox.cli", "classify", *domain_clips, "--adapt", "--format",
                          "jsonl", "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(records) == len(domain_clips) and all("quality" in r for r in records)


def test_answers_carry_the_recordings_quality_and_a_raised_threshold_when_it_is_poor():
    from emovox.audio import load_audio
    from emovox.degrade import parse_spec

    model = emovox.load_model()
    clean = model.predict(EXAMPLE)
    assert clean.quality is not None and not clean.quality.poor
    assert clean.to_dict()["quality"]["issues"] == []
    noisy_wave, _ = parse_spec("pink:0").degrade(load_audio(EXAMPLE), seed=0)
    noisy = model.predict(noisy_wave, sample_rate_hz=16000)
    assert noisy.quality.poor and noisy.effective_threshold == pytest.approx(model.threshold + 0.15)
    if noisy.low_confidence:
        assert "for this recording (noisy" in noisy.warning


def test_quality_temperature_softens_answers_on_the_issues_it_names(tmp_path):
    """A model folder's quality_temperature: a narrowband clip's scores are softmax at T x its factor, a clean clip's
    are as before; a hostile value in model_config.json is refused at load, naming the file and the problem."""
    from emovox.audio import load_audio
    from emovox.degrade import parse_spec
    from emovox.modelio import load_model_dir, save_model
    from emovox.runtime.answers import retemper

    src = resolve_model_path("crnn")[1]
    plain = emovox.load_model(src, backend="torch")
    folder = tmp_path / "crnn"
    shutil.copytree(src, folder)
    loaded = load_model_dir(folder)

    def write(quality_temperature):  # weights, config and labels, as a training run writes them
        save_model(folder, loaded.pipeline.model, {**loaded.config, "quality_temperature": quality_temperature})

    write({"narrowband": 2.5})
    model = emovox.load_model(folder, backend="torch")
    assert model.quality_temperature == {"narrowband": 2.5}
    phone, _ = parse_spec("telephone").degrade(load_audio(EXAMPLE), seed=0)
    a, b = plain.predict(phone, sample_rate_hz=16000), model.predict(phone, sample_rate_hz=16000)
    assert b.quality.kinds == ("narrowband",)
    np.testing.assert_allclose(list(b.scores.values()), retemper(np.array(list(a.scores.values())), 2.5), atol=1e-5)
    assert b.score < a.score
    np.testing.assert_allclose(list(model.predict(EXAMPLE).scores.values()),
                               list(plain.predict(EXAMPLE).scores.values()), atol=1e-5)
    write({"noisy": -1})
    with pytest.raises(ModelLoadError, match=r"quality_temperature\['noisy'\] must be a number in \[0.2, 5.0\]"):
        emovox.load_model(folder, backend="torch")

"""emovox export: every registered model family to ONNX, TorchScript and Core ML, checked against PyTorch.

Tiny randomly initialised models are built through the registry and saved with modelio; the
exported graphs are run here (onnxruntime, TorchScript) independently of the exporter's own
checks, and Core ML files are read back (their spec and ML program), since running them needs macOS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from emovox.cli import main
from emovox.export import ExportError, export_model, preprocessing_spec, synthetic_clips
from emovox.features import FeatureConfig, FeatureStats, mel_filterbank, preset
from emovox.modelio import load_model_dir, make_config, save_model
from emovox.models import MODELS, build_model, model_names

# TorchScript is deprecated in PyTorch 2.10+; these tests load TorchScript files on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SR = 16000
LABELS = ["happy", "sad", "angry", "surprised", "neutral"]
RAVDESS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ravdess"
TOL = 1e-4
#: Small settings per family (unknown families are built with their defaults).
TINY = {
    "cnn": {"channels": (8, 8, 8), "hidden": 8},
    "cnn2d": {"channels": (4, 4, 4), "hidden": (8,)},
    "crnn": {"channels": (4, 4, 4), "proj_dim": 8, "rnn_hidden": 8, "attention_dim": 8, "hidden": 8},
    "lstm": {"hidden_size": 16, "num_layers": 2},
    "fast": {"channels": (8, 8, 8), "strides": (2, 1), "attention_dim": 8},
}


def make_model_dir(path: Path, name: str, features: str | FeatureConfig = "logmel64", *, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = preset(features) if isinstance(features, str) else features
    model = build_model(name, n_features=cfg.n_features, n_classes=len(LABELS), **TINY.get(name, {}))
    # BatchNorm running statistics away from (0, 1), so the export must carry them
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(seed)
    base = -40.0 if cfg.kind == "logmel" else 0.0
    stats = FeatureStats((base + torch.randn(cfg.n_features, generator=g)).tolist(),
                         (15.0 + 5 * torch.rand(cfg.n_features, generator=g)).tolist())
    config = make_config(model_name=name, model_kwargs=model.kwargs, features=cfg, labels=LABELS, stats=stats,
                         temperature=1.7)
    return save_model(path, model.eval(), config)


def _features_for(name: str) -> str | FeatureConfig:
    if getattr(MODELS[name], "streaming", False):
        return "seed003"
    # the shipped default's family exports with speech-level normalisation in its graphs
    return preset("logmel64").replace(level_db=0.0) if name == "crnn" else "logmel64"


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Two real RAVDESS clips when ../shared/data is there (else synthetic ones), plus a synthetic clip
    with exact digital silence (zero-frame skipping) and a short one (crop/pad)."""
    synth = synthetic_clips(SR)
    files = sorted(RAVDESS.glob("Actor_0[12]/*.flac"))[:1] + sorted(RAVDESS.glob("Actor_02/*.flac"))[5:6]
    if len(files) < 2:
        return synth
    from emovox.audio import load_audio

    return [load_audio(f, sample_rate_hz=SR) for f in files] + synth[:2]


def _all_families() -> list[str]:
    # ssl needs a pretrained backbone checkpoint (built in tests/pretrained/test_ssl.py, which tests its export)
    return [n for n in model_names() if n != "ssl"]


@pytest.fixture(scope="module", params=_all_families())
def family_export(request, tmp_path_factory, clips):
    """One export per registered family: every format, both input kinds, checked on the clips."""
    name = request.param
    root = tmp_path_factory.mktemp(f"export_{name}")
    model_dir = make_model_dir(root / "model", name, _features_for(name))
    out = root / "out"
    report = export_model(model_dir, out, check_audio=clips)
    return name, model_dir, out, report


# ---------------------------------------------------------------------------------------------
# Every family, every format


def test_every_family_exports_every_format_within_tolerance(family_export):
    name, _, out, report = family_export
    files = report.files
    for kind in ("waveform", "features"):
        assert (out / files["onnx"][kind]).is_file()
        assert (out / files["torchscript"][kind]).is_file()
        assert set(files["coreml"][kind]) == {"neuralnetwork", "mlprogram"}
        for fmt in ("onnx", "torchscript"):
            check = report.checks[kind][fmt]
            assert check["ok"] and check["max_abs_diff"] < TOL, (name, kind, fmt, check)
            assert len(check["cases"]) >= 4  # single clips of several lengths and a batch
    for f in ("preprocessing.json", "export.json", "model_config.json", "labels.json"):
        assert (out / f).is_file()
    assert json.loads((out / "labels.json").read_text()) == LABELS
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]  # no temporary folder left


def test_onnx_waveform_matches_pytorch_dynamic_batch_and_length(family_export, clips):
    """Run the ONNX file here, on batch sizes 1-3 and three lengths, against the PyTorch pipeline."""
    _, model_dir, out, _ = family_export
    ref = load_model_dir(model_dir).pipeline
    sess = ort.InferenceSession(str(out / "emotion_waveform.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    assert inp.shape == ["batch", "samples"] and outp.shape[0] == "batch"
    worst = 0.0
    for batch, n in ((1, 12345), (2, 30000), (3, 51200)):
        x = np.stack([np.resize(c, n) for c in clips[:batch]])
        with torch.no_grad():
            expected = ref(torch.from_numpy(x)).numpy()
        got = sess.run(None, {inp.name: x})[0]
        assert got.shape == (batch, len(LABELS))
        worst = max(worst, float(np.abs(got - expected).max()))
    assert worst < TOL


def test_torchscript_matches_pytorch_and_carries_config(family_export, clips):
    _, model_dir, out, _ = family_export
    ref = load_model_dir(model_dir).pipeline
    extra = {"config.json": "", "export.json": "", "preprocessing.json": ""}
    ts = torch.jit.load(str(out / "emotion_waveform.pt"), _extra_files=extra)
    assert json.loads(extra["config.json"])["labels"] == LABELS
    assert json.loads(extra["export.json"])["inputs"][0]["name"] == "waveform"
    x = torch.from_numpy(clips[0][None])
    with torch.no_grad():
        assert float((ts(x) - ref(x)).abs().max()) < TOL


def test_coreml_specs_read_back(family_export):
    """Both Core ML flavours: names, float32 types, shapes, metadata, and the converted program."""
    ct = pytest.importorskip("coremltools")
    from coremltools.proto import FeatureTypes_pb2 as ft

    name, _, out, report = family_export
    streaming = getattr(MODELS[name], "streaming", False)
    features = _features_for(name)
    nf = (preset(features) if isinstance(features, str) else features).n_features
    for kind, per in report.files["coreml"].items():
        for flavour, fname in per.items():
            spec = ct.models.MLModel(str(out / fname), skip_model_load=True).get_spec()
            ins = {d.name: d.type.multiArrayType for d in spec.description.input}
            outs = {d.name: d.type.multiArrayType for d in spec.description.output}
            for arr in (*ins.values(), *outs.values()):
                assert arr.dataType == ft.ArrayFeatureType.FLOAT32
            assert list(outs["emotion_logits"].shape) == [1, len(LABELS)]
            if kind == "waveform":
                assert list(ins) == ["waveform"]
                rng = ins["waveform"].shapeRange.sizeRanges
                assert rng[1].upperBound == 60 * SR and rng[1].lowerBound <= 512  # flexible length
            elif streaming:
                assert list(ins) == ["mfcc", "h", "c"] and list(outs) == ["emotion_logits", "h_out", "c_out"]
                assert list(ins["mfcc"].shape) == [1, 1, nf]
                assert list(ins["h"].shape) == [2, 1, 16] == list(outs["h_out"].shape)
            else:
                assert list(ins) == ["log_mel_spectrogram"]
            md = spec.description.metadata
            assert md.author == "emovox" and md.license and "speech emotion" in md.shortDescription
            assert json.loads(md.userDefined["labels"]) == LABELS
            assert float(md.userDefined["temperature"]) == pytest.approx(1.7)
            if flavour == "mlprogram":
                assert spec.WhichOneof("Type") == "mlProgram" and fname.endswith(".mlpackage")
                ops = {op.type for block in spec.mlProgram.functions["main"].block_specializations.values()
                       for op in block.operations}
                assert ("lstm" in ops) if (streaming and kind == "features") else ("conv" in ops or "lstm" in ops)
            else:
                assert spec.WhichOneof("Type") == "neuralNetwork" and fname.endswith(".mlmodel")
                assert len(spec.neuralNetwork.layers) > 3


# ---------------------------------------------------------------------------------------------
# Seed 000's Core ML model and the preprocessing spec


@pytest.fixture(scope="module")
def seed000_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed000")
    model_dir = make_model_dir(root / "model", "cnn", "seed000")
    out = root / "out"
    report = export_model(model_dir, out, formats=["coreml", "onnx"], inputs="features")
    return model_dir, out, report


def test_seed000_coreml_names_and_shapes(seed000_export):
    ct = pytest.importorskip("coremltools")
    _, out, report = seed000_export
    assert report.files["coreml"]["features"] == {"neuralnetwork": "EmotionClassifier.mlmodel",
                                                  "mlprogram": "EmotionClassifier.mlpackage"}
    for fname in ("EmotionClassifier.mlmodel", "EmotionClassifier.mlpackage"):
        spec = ct.models.MLModel(str(out / fname), skip_model_load=True).get_spec()
        (i,), (o,) = spec.description.input, spec.description.output
        assert i.name == "log_mel_spectrogram" and list(i.type.multiArrayType.shape) == [1, 64, 100]
        assert o.name == "emotion_logits" and list(o.type.multiArrayType.shape) == [1, 5]
        assert "NOT normalised" in i.shortDescription
    sess = ort.InferenceSession(str(out / "emotion_features.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 64, 100]


def test_preprocessing_json_reproduces_the_features_with_numpy(seed000_export, clips):
    """A device following preprocessing.json (framing, periodic Hann, FFT power, mel, log) gets the
    model's own features: this is the recipe docs/device-integration.md turns into Swift."""
    model_dir, out, _ = seed000_export
    spec = json.loads((out / "preprocessing.json").read_text())
    pipe = load_model_dir(model_dir).pipeline
    assert spec["stft"]["n_fft"] == 2048 and spec["stft"]["hop_length"] == 512 and spec["stft"]["center"]
    assert spec["frames"]["num_frames"] == 100 and spec["frames"]["duration_s"] == pytest.approx(3.2)
    fb = np.array(spec["mel"]["filterbank"], np.float32)
    assert fb.shape == (64, 1025) and np.array_equal(fb, mel_filterbank(SR, 2048, 64))
    assert spec["normalization"]["applied_in_graph"] is True
    assert spec["normalization"]["mean"] == pytest.approx(pipe.normalize.mean.flatten().tolist())
    assert spec["labels"] == LABELS and spec["temperature"] == pytest.approx(1.7)

    wave = clips[0]
    if len(wave) < 4 * SR:  # synthetic fallback clips are short: repeat to 4 s so the centre crop is exercised
        wave = np.resize(wave, 4 * SR).astype(np.float32)
    x = wave.astype(np.float64)
    st = spec["stft"]
    pad = st["center_padding"]["left"]
    x = np.pad(x, (pad, pad))
    n_frames = 1 + (len(x) - st["n_fft"]) // st["hop_length"]
    idx = np.arange(st["n_fft"])[None] + st["hop_length"] * np.arange(n_frames)[:, None]
    power = np.abs(np.fft.rfft(x[idx] * np.array(st["window_values"]), axis=-1)) ** 2
    logmel = 10 * np.log10(np.maximum(power @ fb.T.astype(np.float64), spec["log"]["floor"])).T
    t, n = logmel.shape[1], spec["frames"]["num_frames"]
    start = (t - n) // 2
    assert t > n  # the clip is longer than 3.2 s: centre crop
    logmel = logmel[:, start : start + n]
    with torch.no_grad():
        raw, _ = pipe.raw_features(torch.from_numpy(np.ascontiguousarray(wave))[None])
    assert np.abs(logmel - raw[0].numpy()).max() < 2e-3  # dB; float32 model vs float64 numpy


def test_preprocessing_spec_for_mfcc_has_dct_and_skip_rule():
    cfg = make_config(model_name="lstm", model_kwargs={}, features=preset("seed003"), labels=LABELS, stats=None)
    spec = preprocessing_spec(cfg)
    assert spec["kind"] == "mfcc" and np.array(spec["mfcc"]["dct_matrix"]).shape == (13, 40)
    assert spec["skip_zero_frames"]["enabled"] is True and spec["stft"]["center"] is False
    assert spec["stft"]["window_padding"] == {"left": 56, "right": 56, "note": spec["stft"]["window_padding"]["note"]}
    assert spec["layout"]["features"].startswith("(batch, frames, n_features)")
    assert spec["normalization"]["formula"] == "none (identity)"


# ---------------------------------------------------------------------------------------------
# Streaming LSTM: frame by frame with explicit state


def test_lstm_steps_frame_by_frame_in_onnxruntime(tmp_path, clips):
    model_dir = make_model_dir(tmp_path / "model", "lstm", "seed003", seed=3)
    out = tmp_path / "out"
    export_model(model_dir, out, formats="onnx", check=False)
    pipe = load_model_dir(model_dir).pipeline
    sess = ort.InferenceSession(str(out / "emotion_features.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["mfcc", "h", "c"]
    assert [o.name for o in sess.get_outputs()] == ["emotion_logits", "h_out", "c_out"]
    assert sess.get_inputs()[0].shape == ["batch", "frames", 13]
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["emovox"])
    assert meta["state"]["shapes_at_batch_1"] == [[2, 1, 16], [2, 1, 16]] and meta["normalization_in_graph"]

    wave = clips[-1]  # synthetic, with digital silence: zero frames are skipped before the model
    with torch.no_grad():
        raw, _ = pipe.raw_features(torch.from_numpy(wave)[None])  # (1, 13, T) un-normalised MFCC
        norm = pipe.normalize(raw).transpose(1, 2)
        expected_whole = pipe(torch.from_numpy(wave)[None]).numpy()
    frames = raw.transpose(1, 2).numpy()
    h = np.zeros((2, 1, 16), np.float32)
    c = np.zeros((2, 1, 16), np.float32)
    hidden, worst = None, 0.0
    for i in range(frames.shape[1]):
        logits, h, c = sess.run(None, {"mfcc": frames[:, i : i + 1], "h": h, "c": c})
        with torch.no_grad():
            ref, hidden = pipe.model(norm[:, i : i + 1], hidden)
        worst = max(worst, float(np.abs(logits - ref.numpy()).max()), float(np.abs(h - hidden[0].numpy()).max()),
                    float(np.abs(c - hidden[1].numpy()).max()))
    assert frames.shape[1] > 100 and worst < TOL
    assert np.abs(logits - expected_whole).max() < TOL  # stepping ends where the whole-clip pipeline does


def test_seed003_backend_features_export_and_torchscript_takes_seed003_hidden(tmp_path, clips):
    """An LSTM on seed 003's exact features (framewise-librosa-mfcc13: peak normalisation, per-frame
    top_db, a 400-sample frame in a 2048-point FFT) exports to every format within tolerance, and the
    TorchScript feature graph is seed 003's forward(x, hidden) with hidden=None to start. (Core ML
    conversion of these graphs is left out for time: ~12 s here, and its numbers need macOS.)"""
    model_dir = make_model_dir(tmp_path / "model", "lstm", "framewise-librosa-mfcc13", seed=4)
    out = tmp_path / "out"
    report = export_model(model_dir, out, formats=("onnx", "torchscript"), check_audio=clips)
    for kind in ("waveform", "features"):
        for fmt in ("onnx", "torchscript"):
            assert report.checks[kind][fmt]["ok"], (kind, fmt, report.checks[kind][fmt])
    prep = json.loads((out / "preprocessing.json").read_text())
    assert prep["audio"]["peak_normalize"] is True and len(prep["stft"]["window_values"]) == 400
    assert prep["stft"]["window_values"][0] == 1.0 and "per frame" in prep["log"]["top_db_note"]
    assert prep["frames"]["count_for_samples"].startswith("1 + (samples - 400) // hop_length")

    pipe = load_model_dir(model_dir).pipeline
    extra = {"export.json": ""}
    model = torch.jit.load(str(out / "emotion_features.pt"), _extra_files=extra)
    assert "model(mfcc, hidden)" in json.loads(extra["export.json"])["torchscript_call"]
    wave = torch.from_numpy(clips[-1])[None]
    with torch.no_grad():
        raw, _ = pipe.raw_features(wave)
        hidden = None
        for i in range(raw.shape[-1]):  # seed 003's loop
            output, hidden = model(raw[:, :, i : i + 1].transpose(1, 2), hidden)
        assert float((output - pipe(wave)).abs().max()) < TOL and hidden[0].shape == (2, 1, 16)


# ---------------------------------------------------------------------------------------------
# ONNX file properties, quantisation


def test_onnx_is_self_contained_with_opset_and_metadata(tmp_path):
    model_dir = make_model_dir(tmp_path / "model", "cnn")
    out = tmp_path / "out"
    export_model(model_dir, out, formats="onnx", inputs="waveform", opset=18, check=False)
    files = [p.name for p in out.iterdir()]
    assert sorted(files) == ["emotion_waveform.onnx", "export.json", "labels.json", "model_config.json",
                             "preprocessing.json"]
    model = onnx.load(str(out / "emotion_waveform.onnx"), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    props = {p.key: p.value for p in model.metadata_props}
    assert props["opset"] == "18" and json.loads(props["labels"]) == LABELS
    assert float(props["temperature"]) == pytest.approx(1.7) and props["sample_rate_hz"] == "16000"
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "samples"]


def test_int8_quantisation_reports_size_and_agreement(tmp_path, clips):
    model_dir = make_model_dir(tmp_path / "model", "cnn")
    out = tmp_path / "out"
    report = export_model(model_dir, out, formats="onnx", quantize="int8", check_audio=clips)
    for kind in ("waveform", "features"):
        q = report.quantization[kind]
        assert (out / f"emotion_{kind}.int8.onnx").stat().st_size == q["int8_bytes"]
        assert q["float32_bytes"] > 0 and q["int8_bytes"] > 0 and q["quantized_nodes"] >= 3
        assert 0.0 <= q["vs_float_onnx"]["top1_agreement"] <= 1.0 and q["vs_float_onnx"]["clips"] == len(clips)
        assert q["vs_pytorch"]["max_abs_diff"] < 0.5  # int8 weights: close, not equal
    model = onnx.load(str(out / "emotion_waveform.int8.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert "DynamicQuantizeLinear" in ops or "ConvInteger" in ops or "MatMulInteger" in ops
    # the front-end stays float32
    assert any(n.name == "/frontend/spectrogram/Conv" and n.op_type == "Conv" for n in model.graph.node)


# ---------------------------------------------------------------------------------------------
# Failures leave nothing behind


def _no_leftovers(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.mark.parametrize("damage, message", [
    ("missing_weights", "best_model.pth is missing"),
    ("missing_labels", "labels.json is missing"),
    ("truncated_weights", "corrupt or truncated"),
    ("corrupt_config", "corrupt or unreadable JSON"),
    ("wrong_labels", "differ from the checkpoint"),
])
def test_missing_or_corrupt_model_file_fails_clearly_and_leaves_nothing(tmp_path, damage, message):
    model_dir = make_model_dir(tmp_path / "model", "cnn")
    if damage == "missing_weights":
        (model_dir / "best_model.pth").unlink()
    elif damage == "missing_labels":
        (model_dir / "labels.json").unlink()
    elif damage == "truncated_weights":
        data = (model_dir / "best_model.pth").read_bytes()
        (model_dir / "best_model.pth").write_bytes(data[: len(data) // 2])
    elif damage == "corrupt_config":
        (model_dir / "model_config.json").write_text("{not json")
    elif damage == "wrong_labels":
        (model_dir / "labels.json").write_text(json.dumps(LABELS[::-1]))
    with pytest.raises(ExportError, match=message):
        export_model(model_dir, tmp_path / "out", formats="onnx")
    assert _no_leftovers(tmp_path, "out")


def test_failure_during_export_removes_the_partial_output(tmp_path, monkeypatch):
    from emovox.export import torchscript_export

    model_dir = make_model_dir(tmp_path / "model", "cnn")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(torchscript_export, "write_torchscript", boom)
    with pytest.raises(ExportError, match="disk full"):
        export_model(model_dir, tmp_path / "out", formats=["onnx", "torchscript"], check=False)
    assert _no_leftovers(tmp_path, "out")
    # an existing output folder is kept unless overwriting is asked for
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_model(model_dir, tmp_path / "out", formats="onnx", check=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_bad_arguments_are_reported():
    with pytest.raises(ExportError, match="unknown format 'tflite'"):
        export_model("nowhere", "out", formats="tflite")
    with pytest.raises(ExportError, match="single input kind"):
        export_model("nowhere", "out", input_name="x")
    with pytest.raises(ValueError, match="not a valid tensor name"):
        from emovox.export.spec import check_name

        check_name("1st input", "input name")


# ---------------------------------------------------------------------------------------------
# CLI and the PyTorch-free ONNX backend


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = make_model_dir(root / "model", "cnn", seed=5)
    out = root / "out"
    rc = main(["export", "--model", str(model_dir), "--format", "onnx", "--format", "torchscript",
               "--input", "waveform", "--input-name", "audio", "--output-dir", str(out), "--quantize", "int8"])
    assert rc == 0
    return model_dir, out


def test_cli_export_writes_named_files(cli_export, capsys):
    model_dir, out = cli_export
    assert (out / "emotion_waveform.onnx").is_file() and (out / "emotion_waveform.int8.onnx").is_file()
    assert (out / "emotion_waveform.pt").is_file() and not (out / "emotion_features.onnx").exists()
    sess = ort.InferenceSession(str(out / "emotion_waveform.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "audio" and sess.get_outputs()[0].name == "emotion_logits"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["checks"]["waveform"]["onnx"]["max_abs_diff"] < TOL
    assert manifest["quantization"]["waveform"]["int8_bytes"] > 0
    # errors: one line, exit code 2, nothing written
    rc = main(["export", "--model", str(model_dir / "nope"), "--output-dir", str(out.parent / "x")])
    assert rc == 2 and "error:" in capsys.readouterr().err and not (out.parent / "x").exists()


def test_onnx_model_predict_logits_equals_pytorch(cli_export, clips):
    from emovox.runtime.onnx_backend import OnnxModel

    model_dir, out = cli_export
    pipe = load_model_dir(model_dir).pipeline
    m = OnnxModel(out)
    assert m.labels == LABELS and m.sample_rate_hz == SR and m.temperature == pytest.approx(1.7)
    n = 40000
    waves = np.stack([np.resize(c, n) for c in clips[:3]])
    with torch.no_grad():
        expected = pipe(torch.from_numpy(waves)).numpy()
    assert np.abs(m.predict_logits(waves) - expected).max() < TOL
    # a zero-padded batch with lengths: each clip as if alone, as the PyTorch pipeline's masking does
    lengths = np.array([n, 25000, 17000])
    padded = waves.copy()
    for i, k in enumerate(lengths):
        padded[i, k:] = 0
    with torch.no_grad():
        alone = np.concatenate([pipe(torch.from_numpy(waves[i : i + 1, :k])).numpy() for i, k in enumerate(lengths)])
        masked = pipe(torch.from_numpy(padded), torch.from_numpy(lengths)).numpy()
    got = m.predict_logits(padded, lengths)
    assert np.abs(got - alone).max() < TOL and np.abs(got - masked).max() < TOL
    # the int8 file and a direct .onnx path load too
    assert OnnxModel(out, quantized=True).path.name == "emotion_waveform.int8.onnx"
    assert OnnxModel(out / "emotion_waveform.onnx").labels == LABELS


def test_onnx_backend_runs_without_torch(cli_export):
    """onnx_backend.py imports no torch: load it on its own in a process where torch cannot be imported."""
    _, out = cli_export
    src = Path(__file__).resolve().parents[2] / "src" / "emovox" / "onnx_backend.py"
    code = textwrap.dedent(f"""
        import importlib.util, sys
        import numpy as np
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked")
        sys.meta_path.insert(0, Block())
        spec = importlib.util.spec_from_file_location("onnx_backend", {str(src)!r})
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        m = mod.OnnxModel({str(out)!r})
        p = m.probabilities(np.zeros((2, 16000), np.float32))
        assert p.shape == (2, 5) and abs(p.sum() - 2) < 1e-5
        assert "torch" not in sys.modules
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.realdata
def test_onnx_model_on_real_ravdess_clips(cli_export):
    """Several real clips of different lengths, one batch with lengths, against the PyTorch pipeline."""
    if not RAVDESS.is_dir():
        pytest.skip(f"real data not available: {RAVDESS} is absent (it lives in ../shared/data beside the repo)")
    from emovox.audio import load_audio
    from emovox.runtime.onnx_backend import OnnxModel

    model_dir, out = cli_export
    files = [sorted(RAVDESS.glob(f"Actor_{a:02d}/*.flac"))[i] for a, i in ((3, 0), (4, 9), (5, 20), (6, 33))]
    waves = [load_audio(f, sample_rate_hz=SR) for f in files]
    lengths = np.array([len(w) for w in waves])
    assert len(set(lengths)) > 1
    batch = np.zeros((len(waves), lengths.max()), np.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    pipe = load_model_dir(model_dir).pipeline
    with torch.no_grad():
        expected = np.concatenate([pipe(torch.from_numpy(w)[None]).numpy() for w in waves])
    got = OnnxModel(out).predict_logits(batch, lengths)
    assert np.abs(got - expected).max() < TOL
    assert (OnnxModel(out, quantized=True).predict_logits(batch, lengths).argmax(1) == expected.argmax(1)).mean() >= 0.5

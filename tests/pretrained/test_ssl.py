"""The pretrained-backbone hybrid (seed 002): tiny random wav2vec2 / HuBERT / WavLM checkpoints built
here, trained on the synthetic corpus, saved, reloaded, evaluated, exported; the hidden-state cache,
chunking, bundling and the errors when a backbone cannot be found. No network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch

from emovox.audio import load_audio
from emovox.cli import main
from emovox.data.backbone_data import HiddenStateCache, load_hidden_states
from emovox.errors import BackboneError
from emovox.inference import load_model
from emovox.modelio import ModelLoadError, load_model_dir
from emovox.pretrained.backbone_loading import load_backbone
from emovox.pretrained.backbones import Backbone

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
            conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            vocab_size=8)
FAST = ["--epochs", "2", "--batch_size", "16", "--lr", "0.003", "--val_split", "0.25", "--seed", "0",
        "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict:
    """Tiny random checkpoints (save_pretrained folders); WavLM's has no preprocessor_config.json."""
    from transformers import AutoModel, HubertConfig, Wav2Vec2Config, Wav2Vec2FeatureExtractor, WavLMConfig

    root = tmp_path_factory.mktemp("backbones")
    out = {}
    for name, cls, extra in (("wav2vec2", Wav2Vec2Config, {}), ("hubert", HubertConfig, {}),
                             ("wavlm", WavLMConfig, {"num_buckets": 32, "max_bucket_distance": 64})):
        torch.manual_seed(0)
        folder = root / name
        AutoModel.from_config(cls(**TINY, **extra)).save_pretrained(folder)
        if name != "wavlm":
            Wav2Vec2FeatureExtractor().save_pretrained(folder)
        out[name] = folder
    return out


class CountRuns:
    """Counts backbone passes (Backbone.run) while active."""

    def __init__(self, monkeypatch):
        self.n = 0
        original = Backbone.run

        def run(backbone, x, layers):
            self.n += 1
            return original(backbone, x, layers)

        monkeypatch.setattr(Backbone, "run", run)


def _clip(corpus, label="angry"):
    return sorted(corpus.glob(f"*_{label}_*.wav"))[0]


@pytest.fixture(scope="module")
def trained(synth_corpus, backbones, tmp_path_factory):
    """A frozen wav2vec2 hybrid trained through the CLI; the backbone is a copy the tests may move away."""
    root = tmp_path_factory.mktemp("ssl")
    source = shutil.copytree(backbones["wav2vec2"], root / "w2v_source")
    out, cache = root / "model", root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        runs = CountRuns(mp)
        rc = main(["train", "--data_dir", str(synth_corpus), "--model", "ssl", "--backbone", str(source),
                   "--cache-dir", str(cache), "--output_dir", str(out), *FAST])
    assert rc == 0
    return {"out": out, "cache": cache, "source": source, "runs": runs.n, "root": root}


def test_training_caches_states_and_saves_a_head_that_references_its_backbone(trained):
    out, cache = trained["out"], trained["cache"]
    assert trained["runs"] == 80  # one backbone pass per clip (1 s clips: no chunking)
    files = sorted(cache.glob("ssl-*/*/*.npy"))
    assert len(files) == 80
    arr = np.load(files[0], mmap_mode="r")
    assert arr.dtype == np.float16 and arr.shape == (3, 32, 49)  # layers 0..2 x hidden 32 x 49 frames (20 ms hop)
    info = json.loads(next(cache.glob("ssl-*/cache.json")).read_text())
    assert info["layers"] == [0, 1, 2] and info["precision"] == "fp32" and info["weights_hash"]

    payload = torch.load(out / "best_model.pth", weights_only=True)
    assert not [k for k in payload["state_dict"] if k.startswith("backbone.")]  # referenced, not copied
    assert (out / "best_model.pth").stat().st_size < 1_000_000
    cfg = json.loads((out / "model_config.json").read_text())
    ref = cfg["model"]["kwargs"]["backbone"]
    assert ref["source"] == str(trained["source"]) and ref["kind"] == "local"
    assert len(ref["config_hash"]) == 16 and len(ref["weights_hash"]) == 16 and ref["model_type"] == "wav2vec2"
    assert ref["normalize"] is True and "preprocessor_config.json" in ref["normalize_from"]
    assert cfg["features"]["kind"] == "waveform" and cfg["normalization"] is None
    for name in ("metrics_overall.json", "confusion_matrix.npy", "training_history.json", "checkpoint.pt"):
        assert (out / name).is_file(), name


def test_second_run_reads_the_cache_without_running_the_backbone(trained, synth_corpus, monkeypatch):
    runs = CountRuns(monkeypatch)
    out2 = trained["root"] / "model_again"
    rc = main(["train", "--data_dir", str(synth_corpus), "--model", "ssl", "--backbone", str(trained["source"]),
               "--cache-dir", str(trained["cache"]), "--output_dir", str(out2), *FAST])
    assert rc == 0 and runs.n == 0
    a = json.loads((trained["out"] / "metrics_overall.json").read_text())
    b = json.loads((out2 / "metrics_overall.json").read_text())
    assert a["uar"] == b["uar"] and a["temperature"] == pytest.approx(b["temperature"], rel=1e-6)


def test_reloaded_model_predicts_and_cached_path_matches_waveform_path(trained, synth_corpus, monkeypatch):
    model = load_model(trained["out"])
    pred = model.predict(_clip(synth_corpus))
    assert pred.labels == ["neutral", "happy", "sad", "angry"]
    assert sum(pred.scores.values()) == pytest.approx(1.0, abs=1e-6)
    # the head on the cached (float16) states gives the pipeline's logits on the waveform
    pipe = model.backend.pipeline
    paths = [_clip(synth_corpus, lab) for lab in ("neutral", "happy", "sad", "angry")]
    fs = load_hidden_states(paths, pipe.model.backbone, pipe.model.layers, cache=trained["cache"])
    with torch.no_grad():
        cached = pipe.model(torch.from_numpy(np.stack([np.asarray(f, np.float32) for f in fs.features])))
        wave = pipe(torch.from_numpy(np.stack([load_audio(p, sample_rate_hz=16000) for p in paths])))
    assert fs.decoded == 0
    np.testing.assert_allclose(cached.numpy(), wave.numpy(), atol=2e-3)
    # `emovox evaluate` reads the same cache: no backbone pass but the loader's one-probe sanity check
    runs = CountRuns(monkeypatch)
    ev = trained["root"] / "eval"
    assert main(["evaluate", "--model", str(trained["out"]), str(synth_corpus), "--output-dir", str(ev),
                 "--cache-dir", str(trained["cache"])]) == 0
    assert runs.n == 1
    assert json.loads((ev / "metrics_overall.json").read_text())["n"] == 80


def test_onnx_export_matches_pytorch(trained, synth_corpus, tmp_path):
    from emovox.export import export_model

    report = export_model(trained["out"], tmp_path / "exp", formats=["onnx"])  # the features input is skipped
    check = report.checks["waveform"]["onnx"]
    assert check["ok"] and check["max_abs_diff"] < 1e-4 and len(check["cases"]) == 4
    assert list(report.files["onnx"]) == ["waveform"]
    prep = json.loads((tmp_path / "exp" / "preprocessing.json").read_text())
    assert prep["kind"] == "waveform" and prep["input_normalization"]["per_clip_zero_mean_unit_variance"]
    clip = _clip(synth_corpus, "sad")
    a = load_model(trained["out"]).predict(clip).scores
    b = load_model(tmp_path / "exp", backend="onnx").predict(clip).scores
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) < 1e-5


def test_missing_backbone_fails_with_a_clear_message(trained, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.move(trained["source"], moved)
    try:
        with pytest.raises(ModelLoadError) as e:
            load_model_dir(trained["out"])
    finally:
        shutil.move(moved, trained["source"])
    msg = str(e.value)
    assert str(trained["source"]) in msg and "does not exist" in msg
    assert "save_pretrained" in msg and "--bundle-backbone" in msg


def test_bundled_hubert_folder_is_self_contained(synth_corpus, backbones, tmp_path):
    source = shutil.copytree(backbones["hubert"], tmp_path / "hubert_source")
    out = tmp_path / "model"
    rc = main(["train", "--data_dir", str(synth_corpus), "--model", "ssl", "--backbone", str(source),
               "--bundle-backbone", "--ssl-head", "attention", "--ssl-layers", "1-2", "--no-cache",
               "--output_dir", str(out), *FAST])
    assert rc == 0
    assert (out / "backbone" / "config.json").is_file() and (out / "backbone" / "model.safetensors").is_file()
    before = load_model(out).predict(_clip(synth_corpus, "happy")).scores
    shutil.rmtree(source)
    loaded = load_model(out)  # offline, from model/backbone only
    ref = loaded.config["model"]["kwargs"]["backbone"]
    assert ref["kind"] == "bundled" and ref["source"] == "backbone" and ref["model_type"] == "hubert"
    assert loaded.config["model"]["kwargs"]["layers"] == [1, 2]
    after = loaded.predict(_clip(synth_corpus, "happy")).scores
    assert max(abs(before[k] - after[k]) for k in before) < 1e-6


def test_wavlm_without_preprocessor_config_normalises_by_default(synth_corpus, backbones, tmp_path):
    from emovox.export import export_model

    out = tmp_path / "model"
    rc = main(["train", "--data_dir", str(synth_corpus), "--model", "ssl", "--backbone", str(backbones["wavlm"]),
               "--cache-dir", str(tmp_path / "cache"), "--output_dir", str(out), *FAST])
    assert rc == 0
    ref = json.loads((out / "model_config.json").read_text())["model"]["kwargs"]["backbone"]
    assert ref["model_type"] == "wavlm" and ref["normalize"] is True and ref["normalize_from"].startswith("default")
    report = export_model(out, tmp_path / "exp", formats=["onnx"], inputs=["waveform"])
    assert report.checks["waveform"]["onnx"]["max_abs_diff"] < 1e-4


def test_finetuning_saves_the_trained_top_layer(synth_corpus, backbones, tmp_path, monkeypatch):
    runs = CountRuns(monkeypatch)
    out = tmp_path / "model"
    rc = main(["train", "--data_dir", str(synth_corpus), "--model", "ssl", "--backbone", str(backbones["wav2vec2"]),
               "--finetune-backbone", "1", "--output_dir", str(out), "--epochs", "1", *FAST[2:]])
    assert rc == 0
    assert runs.n == 4 + 1 + 1  # no cache: a batched pass per training batch (60 clips / 16), per validation
    state = torch.load(out / "best_model.pth", weights_only=True)["state_dict"]
    tuned = [k for k in state if k.startswith("backbone.")]
    assert tuned and all(k.startswith("backbone.model.encoder.layers.1.") for k in tuned)
    original = load_backbone(str(backbones["wav2vec2"])).model.state_dict()
    changed = [k for k in tuned if not torch.equal(state[k], original[k[len("backbone.model."):]])]
    assert changed  # the top layer was trained
    loaded = load_model_dir(out)
    assert torch.equal(loaded.pipeline.model.state_dict()[tuned[0]], state[tuned[0]])


def test_padded_batch_gives_each_clip_its_own_logits(backbones):
    from emovox.models import build_model

    torch.manual_seed(0)
    model = build_model("ssl", n_features=1, n_classes=3, backbone=str(backbones["wav2vec2"])).eval()
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(n, generator=g) * 0.1 for n in (16000, 7000, 200)]  # 200 < receptive field: padded
    batch = torch.zeros(3, 1, 16000)
    for i, c in enumerate(clips):
        batch[i, 0, : len(c)] = c
    with torch.no_grad():
        together = model(batch, torch.tensor([len(c) for c in clips]))
        alone = torch.cat([model(c[None, None]) for c in clips])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_long_clips_are_chunked_on_the_frame_grid(backbones, tmp_path):
    bb = load_backbone(str(backbones["wav2vec2"]), chunk_s=0.5, overlap_s=0.1)
    layers = [0, 1, 2]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 52_000, generator=g) * 0.1  # 3.25 s: 6 windows of 0.5 s
    with torch.no_grad():
        states = bb.clip_states(x, layers)
        whole = bb.run(bb.normalize_input(x), layers)
        assert states.shape == whole.shape  # same frame count as one pass
        # every stitched frame is the frame of the window that owns it
        xn = bb.normalize_input(x)
        s, c, o = bb.stride, bb.chunk_samples, bb.overlap_samples
        second = bb.run(xn[:, c - o : 2 * c - o], layers)
        g0, lo, hi = (c - o) // s, (o // s) // 2, (c - o) // s + (o // s) // 2
        torch.testing.assert_close(states[..., g0 + lo : g0 + hi], second[..., lo:hi])
        short = x[:, :8000]
        torch.testing.assert_close(bb.clip_states(short, layers), bb.run(bb.normalize_input(short), layers))
    # the cache stores the same chunked states the model computes at inference
    import soundfile as sf

    wav = tmp_path / "long.wav"
    sf.write(wav, x[0].numpy(), 16000, subtype="FLOAT")
    fs = load_hidden_states([wav], bb, layers, cache=tmp_path / "cache")
    with torch.no_grad():
        direct = bb.clip_states(torch.from_numpy(load_audio(wav, sample_rate_hz=16000))[None], layers)[0]
    np.testing.assert_allclose(np.asarray(fs.features[0], np.float32), direct.numpy(), atol=2e-3, rtol=2e-3)
    cache = HiddenStateCache(tmp_path / "cache", bb, layers)
    assert cache.get(wav) is not None and cache.key["chunk_samples"] == 8000


def test_backbone_errors_say_what_was_tried_and_how_to_fix_it(monkeypatch, tmp_path, synth_corpus, capsys):
    import emovox.pretrained.backbone_loading as bbmod

    t0 = time.perf_counter()
    with pytest.raises(BackboneError) as e:
        load_backbone("nobody-here/no-such-wav2vec2")
    msg = str(e.value)
    assert "'nobody-here/no-such-wav2vec2'" in msg and "HF_HUB_OFFLINE" in msg
    assert "huggingface-cli download nobody-here/no-such-wav2vec2" in msg and "save_pretrained" in msg
    assert time.perf_counter() - t0 < 10  # nothing waits on the network

    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(str(tmp_path / "no_such_folder"))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(bbmod, "offline_mode", lambda: False)
    monkeypatch.setattr(bbmod, "hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(BackboneError, match="cannot be reached"):
        load_backbone("nobody-here/no-such-wav2vec2")

    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16).save_pretrained(
        tmp_path / "bert")
    (tmp_path / "bert" / "model.safetensors").write_bytes(b"")
    with pytest.raises(BackboneError, match="supported speech backbones: wav2vec2, hubert, wavlm"):
        load_backbone(str(tmp_path / "bert"))

    rc = main(["train", "--data_dir", str(synth_corpus), "--model", "ssl", "--backbone", str(tmp_path / "nope"),
               "--output_dir", str(tmp_path / "out"), "--no-cache", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "emovox train: error:" in err and str(tmp_path / "nope") in err
    assert main(["train", "--data_dir", str(synth_corpus), "--model", "cnn", "--backbone", "x",
                 "--output_dir", str(tmp_path / "out")]) == 2
    assert "only with --model ssl" in capsys.readouterr().err


def test_model_meta_counts_the_trained_parameters_beside_the_total(trained):
    """A head on a frozen backbone: model_meta.json gives the parameters training changed, not only the total."""
    from emovox.modelio import load_model_dir

    meta = json.loads((trained["out"] / "model_meta.json").read_text())
    net = load_model_dir(trained["out"]).pipeline.model
    head = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("backbone."))
    assert meta["trained_parameters"] == head < meta["parameters"]

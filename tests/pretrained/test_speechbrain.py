"""Seed 004's audio model: a SpeechBrain wav2vec2 emotion checkpoint folder (hyperparams.yaml, wav2vec2.ckpt,
model.ckpt, label_encoder.txt), served through AUDIO_MODEL_DIR without SpeechBrain. The checkpoint is a tiny one in
that layout, built here."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("transformers")
pytest.importorskip("fastapi")

HPARAMS = """\
# the layout of SpeechBrain's emotion-recognition-wav2vec2 recipe (inference hyperparameters)
pretrained_path: ai/models/audio/checkpoint
wav2vec2_hub: encoder
encoder_dim: 32
out_n_neurons: 4

wav2vec2: !new:speechbrain.lobes.models.huggingface_transformers.wav2vec2.Wav2Vec2
    source: !ref <wav2vec2_hub>
    output_norm: True
    freeze: True
    save_path: wav2vec2_checkpoints

avg_pool: !new:speechbrain.nnet.pooling.StatisticsPooling
    return_std: False

output_mlp: !new:speechbrain.nnet.linear.Linear
    input_size: !ref <encoder_dim>
    n_neurons: !ref <out_n_neurons>
    bias: False

model: !new:torch.nn.ModuleList
    - [!ref <output_mlp>]

modules:
    wav2vec2: !ref <wav2vec2>
    output_mlp: !ref <output_mlp>
    avg_pool: !ref <avg_pool>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        wav2vec2: !ref <wav2vec2>
        model: !ref <model>
        label_encoder: !ref <label_encoder>
    paths:
        wav2vec2: !ref <pretrained_path>/wav2vec2.ckpt
        model: !ref <pretrained_path>/model.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
            conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            vocab_size=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = tmp_path_factory.mktemp("seed004") / "ai" / "models" / "audio" / "checkpoint"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    encoder = Wav2Vec2Model(Wav2Vec2Config(**TINY)).eval()
    encoder.config.save_pretrained(folder / "encoder")  # the encoder's architecture (SpeechBrain's wav2vec2_hub)
    Wav2Vec2FeatureExtractor().save_pretrained(folder / "encoder")
    torch.save({f"model.{k}": v for k, v in encoder.state_dict().items()}, folder / "wav2vec2.ckpt")
    head = torch.randn(4, 32)
    torch.save({"0.w.weight": head}, folder / "model.ckpt")
    (folder / "label_encoder.txt").write_text("'neu' => 0\n'ang' => 1\n'hap' => 2\n'sad' => 3\n================\n"
                                              "'starting_index' => 0\n")
    (folder / "hyperparams.yaml").write_text(HPARAMS)
    return folder, encoder, head


def _reference(encoder, head, wave: np.ndarray) -> np.ndarray:
    """SpeechBrain's wav2vec2 emotion recipe: normalised waveform, output_norm, mean pooling, Linear, softmax."""
    F = torch.nn.functional
    x = torch.from_numpy(wave)[None]
    with torch.no_grad():
        states = encoder(F.layer_norm(x, x.shape[1:])).last_hidden_state
        pooled = F.layer_norm(states, states.shape[-1:]).mean(dim=1)
        return torch.softmax(pooled @ head.T, dim=-1)[0].numpy()


def _voice(seconds=1.5, f0=160.0):
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_audio_model_dir_serves_a_speechbrain_checkpoint(checkpoint):
    from fastapi.testclient import TestClient

    from emovox.server import Settings, create_app

    folder, encoder, head = checkpoint
    settings = Settings.from_env({"AUDIO_MODEL_DIR": str(folder), "TEXT_MODEL_DIR": "none"})
    wave = _voice()
    buf = io.BytesIO()
    sf.write(buf, wave, 16000, format="WAV", subtype="FLOAT")
    with TestClient(create_app(settings)) as c:
        body = c.post("/predict-emotion/", files={"file": ("clip.wav", buf.getvalue())}).json()
    assert list(body["all_probabilities"]) == ["neutral", "angry", "happy", "sad"], body
    expected = _reference(encoder, head, wave)
    np.testing.assert_allclose(list(body["all_probabilities"].values()), expected, atol=1e-5)
    assert "mock" not in body


def test_the_checkpoint_is_read_without_unpickling(checkpoint, tmp_path):
    """A pickled object in wav2vec2.ckpt is refused (weights_only=True), naming the file."""
    import shutil

    from emovox.inference import load_model
    from emovox.modelio import ModelLoadError

    folder = shutil.copytree(checkpoint[0], tmp_path / "ckpt")
    torch.save({"model.x": torch.nn.Linear(2, 2)}, folder / "wav2vec2.ckpt")
    with pytest.raises(ModelLoadError, match="wav2vec2.ckpt: not a plain state dict"):
        load_model(folder)


def test_unsupported_hyperparameters_are_named(checkpoint, tmp_path):
    import shutil

    from emovox.inference import load_model
    from emovox.modelio import ModelLoadError

    folder = shutil.copytree(checkpoint[0], tmp_path / "ckpt")
    text = HPARAMS.replace("return_std: False", "return_std: True").replace(
        "    output_norm: True\n", "    output_norm: True\n    output_all_hiddens: True\n    layer_drop: 0.1\n")
    (folder / "hyperparams.yaml").write_text(text)
    with pytest.raises(ModelLoadError) as e:
        load_model(folder)
    message = str(e.value)
    assert "unsupported SpeechBrain hyperparameters" in message
    for name in ("wav2vec2.layer_drop", "wav2vec2.output_all_hiddens", "avg_pool"):
        assert name in message, message
    assert json.loads(json.dumps(message))  # one plain line

"""Seed 003 (the streaming MFCC-LSTM) followed as its user does: `emovox train --recipe streaming`, then the plan's own
`EmotionLSTM` class, `torch.load`, its per-frame librosa loop, `emovox export --runtime` and `emovox stream`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from emovox.cli import main
from emovox.data.synth import make_synthetic_corpus

APP6 = ("happy", "sad", "angry", "neutral", "fearful", "surprised")  # the plan's front-end classes 0-5


class EmotionLSTM(nn.Module):  # the plan's class, as written in seed 003 ("Step 2.1: Define LSTM Model")
    def __init__(self, input_size=13, hidden_size=128, num_layers=2, num_classes=8, dropout=0.3):
        super(EmotionLSTM, self).__init__()  # noqa: UP008 - the plan's line, as written
        self.hidden_size = hidden_size
        self.num_layers = num_layers

        self.lstm = nn.LSTM(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0,
            batch_first=True
        )

        self.fc = nn.Linear(hidden_size, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, hidden=None):
        lstm_out, hidden = self.lstm(x, hidden)
        last_output = lstm_out[:, -1, :]
        last_output = self.dropout(last_output)
        logits = self.fc(last_output)
        return logits, hidden


def _plan_features(path) -> np.ndarray:
    """The plan's RAVDESSDataset.__getitem__ (librosa load, peak normalisation, frames, per-frame MFCC mean)."""
    librosa = pytest.importorskip("librosa")
    sample_rate = 16000
    audio, sr = librosa.load(path, sr=sample_rate)
    audio = audio / (np.max(np.abs(audio)) + 1e-9)
    frames = librosa.util.frame(audio, frame_length=int(0.025 * sample_rate), hop_length=int(0.010 * sample_rate))
    mfcc_features = []
    for i in range(frames.shape[1]):
        frame = frames[:, i]
        if np.all(frame == 0):
            continue
        mfccs = librosa.feature.mfcc(y=frame, sr=sample_rate, n_mfcc=13)
        mfcc_features.append(np.mean(mfccs, axis=1))
    return np.array(mfcc_features)


def _plan_loop(model, mfcc_features: np.ndarray) -> np.ndarray:
    """The plan's backend loop ("Step 4.1"): frame by frame with the hidden state; the last frame's probabilities."""
    mfcc_features = torch.tensor(mfcc_features, dtype=torch.float32)
    hidden = None
    with torch.no_grad():
        for i in range(len(mfcc_features)):
            frame = mfcc_features[i:i + 1].unsqueeze(0)  # (1, 1, 13)
            output, hidden = model(frame, hidden)
            probs = torch.softmax(output, dim=1)
    return probs[0].numpy()


def _stream(clip, model_dir, capsys, *extra) -> dict:
    capsys.readouterr()
    assert main(["stream", str(clip), "--model", str(model_dir), "--labels", "app6", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`emovox train --recipe streaming --data_dir data/RAVDESS --output_dir src/api` on a small corpus (1 epoch)."""
    root = tmp_path_factory.mktemp("seed003")
    corpus = make_synthetic_corpus(root / "corpus", labels=APP6, n_speakers=3, clips_per_label_per_speaker=2)
    out = root / "src" / "api"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["train", "--recipe", "streaming", "--data_dir", str(corpus), "--output_dir", str(out),
                   "--epochs", "1", "--threads", "1", "--cache-dir", str(root / "cache")])
    assert rc == 0
    return corpus, out, buf.getvalue()


def test_model_weights_load_into_the_plans_class_and_answer_as_emovox_stream(trained, capsys):
    """The plan's `EmotionLSTM` takes `model_weights.pth` with strict=True (weights_only=True), and its own
    per-frame librosa loop gives the probabilities `emovox stream` reports."""
    corpus, out, _ = trained
    labels = json.loads((out / "labels.json").read_text())
    assert tuple(labels) == APP6
    model = EmotionLSTM(num_classes=len(labels))
    model.load_state_dict(torch.load(out / "model_weights.pth", weights_only=True), strict=True)
    model.eval()
    for clip in sorted(corpus.glob("*.wav"))[:: 12]:
        ours = _plan_loop(model, _plan_features(clip))
        got = _stream(clip, out, capsys)
        np.testing.assert_allclose(ours, got["confidence"], atol=2e-3)
        assert int(np.argmax(ours)) == got["class"]


def test_model_weights_fold_standardisation_and_temperature(tmp_path):
    """The folded state dict gives the full model's calibrated logits exactly, temperature and statistics included."""
    from emovox.features import FeatureStats, preset
    from emovox.models import build_model
    from emovox.training.full_model import FullStreamingModel, plain_lstm_state_dict

    torch.manual_seed(0)
    net = build_model("lstm", n_features=13, n_classes=6).eval()
    stats = FeatureStats([-400.0] + [3.0] * 12, [200.0] + [25.0] * 12)
    full = FullStreamingModel(net, stats, preset("framewise-librosa-mfcc13"), 1.7, APP6).eval()
    plain = EmotionLSTM(num_classes=6).eval()
    plain.load_state_dict(plain_lstm_state_dict(full), strict=True)
    x = torch.randn(2, 40, 13) * 30 + torch.tensor([-400.0] + [0.0] * 12)
    with torch.no_grad():
        np.testing.assert_allclose(plain(x)[0].numpy(), full(x)[0].numpy(), atol=1e-4)


def test_training_output_says_how_each_file_loads(trained):
    """The last lines of the run name torch >= 2.6's weights_only failure of `torch.load('model.pth')`, its one-line
    fix, and the pickle-free `model_weights.pth`."""
    _, out, said = trained
    last = said.strip().splitlines()[-2:]
    assert "torch.load('model.pth', weights_only=False)" in last[0] and "weights_only=True" in last[0]
    assert "model_weights.pth" in last[1] and "weights_only=True" in last[1] and "EmotionLSTM" in last[1]
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(out / "model.pth")  # as the plan writes it
    assert isinstance(torch.load(out / "model.pth", weights_only=False), nn.Module)  # the one-line fix
    coming_from = (Path(__file__).resolve().parents[2] / "docs" / "coming-from.md").read_text()
    assert "torch.load('model.pth', weights_only=False)" in coming_from


def test_streaming_recipe_model_gets_onnx_runtime_graphs(trained, tmp_path, capfd):
    """`emovox export --model src/api --runtime` gives the recipe's model (peak-normalised per-frame MFCC) ONNX Runtime
    graphs, with no torch exporter warning; `emovox stream` then runs on ONNX Runtime with PyTorch's answers."""
    from emovox.inference import load_model

    corpus, out, _ = trained
    folder = Path(shutil.copytree(out, tmp_path / "api"))
    capfd.readouterr()
    assert main(["export", "--model", str(folder), "--runtime"]) == 0
    err = capfd.readouterr().err
    assert "PackPadded" not in err and "Warning" not in err, err
    assert type(load_model(folder).backend).__name__ == "OnnxModel"
    for clip in sorted(corpus.glob("*.wav"))[:: 18]:
        on_onnx = _stream(clip, folder, capfd, "--chunk-ms", "130")
        on_torch = _stream(clip, folder, capfd, "--chunk-ms", "130", "--backend", "torch")
        assert on_onnx["frames"] == on_torch["frames"]
        np.testing.assert_allclose(on_onnx["confidence"], on_torch["confidence"], atol=1e-4)


def test_every_command_sizes_torch_threads(tmp_path):
    """`emovox stream` on PyTorch runs torch with one thread, as `emovox serve` does (threads oversubscribed on a
    busy machine took seconds per clip); training gets the process's cores."""
    from emovox.testing import create_model

    folder = create_model(tmp_path / "m", name="lstm", features="framewise-librosa-mfcc13", labels=list(APP6))
    clip = Path(__file__).resolve().parents[2] / "examples" / "ravdess_03-01-05-02-01-01-12.flac"
    script = f"""
import sys
from emovox.cli import main
rc = main(["stream", {str(clip)!r}, "--model", {str(folder)!r}, "--backend", "torch"])
import torch
print("threads", torch.get_num_threads(), file=sys.stderr)
sys.exit(rc)
"""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "threads 1" in res.stderr.splitlines()[-1]

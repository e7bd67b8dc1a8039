"""The pickled full models of ``--save-full-model``; pickles name them as ``emovox.training.FullModel`` and ``emovox.training.FullStreamingModel`` (re-exported by the package)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emovox.atomic import write_file, write_files
from emovox.features import (
    FeatureConfig,
    FeatureStats,
    Normalize,
    normalize_level,
    preset,
)
from emovox.modelio import (
    FULL_MODEL_FILE,
    STREAMING_FULL_MODEL_FILE,
    STREAMING_TORCHSCRIPT_FILE,
    STREAMING_WEIGHTS_FILE,
    torch_saver,
)
from emovox.models.common import is_streaming
from emovox.training.config import LSTM_LOOP_FEATURES


class FullModel(nn.Module):
    """What ``--save-full-model`` pickles to ``model_full.pth`` for frame models (cnn, cnn2d, crnn).

    ``forward(feats, lengths=None) -> logits``: raw (un-normalised) features ``(batch, n_features,
    frames)`` in, calibrated logits (divided by the fitted temperature) out; normalisation (speech
    level when the features have ``level_db``, then the training statistics) inside.
    Loading needs ``torch.load(path, weights_only=False)`` with ``emovox`` installed. A pickle can
    run arbitrary code when loaded: never load one from an untrusted source (emovox's own loader
    reads ``best_model.pth``, which holds tensors only).
    """

    __module__ = "emovox.training"  # the path pickles record (emovox/training/__init__.py exposes it)

    def __init__(self, model: nn.Module, stats: FeatureStats | None, feature_config: FeatureConfig,
                 temperature: float, labels: Sequence[str]):
        super().__init__()
        self.model = model
        self.feature_config = feature_config
        self.normalize = Normalize(stats, feature_config.n_features)
        self.labels = list(labels)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        feats = normalize_level(feats, self.feature_config, lengths)
        return self.model(self.normalize(feats), lengths) / self.temperature


class FullStreamingModel(FullModel):
    """What ``--save-full-model`` pickles to ``model.pth`` for streaming models: the streaming MFCC-LSTM's interface
    ``forward(x, hidden=None) -> (logits, hidden)`` with raw MFCC frames ``x`` of shape ``(batch,
    frames, n_mfcc)``: a single frame ``(1, 1, 13)`` continues the sequence from ``hidden``.
    Normalisation and temperature inside, so ``softmax(logits)`` is emovox's answer. With the
    ``framewise-librosa-mfcc13`` features, the streaming MFCC-LSTM's backend loop runs it as written; torch >= 2.6
    loads it with ``torch.load(path, weights_only=False)`` only, and emovox must be importable
    there (the pickle names this class). Same warning as :class:`FullModel`."""

    __module__ = "emovox.training"  # the path pickles record (emovox/training/__init__.py exposes it)

    def forward(self, x: torch.Tensor, hidden=None, lengths: torch.Tensor | None = None):
        x = self.normalize(x.transpose(1, 2)).transpose(1, 2)
        logits, hidden = self.model(x, hidden, lengths)
        return logits / self.temperature, hidden


def plain_lstm_state_dict(full: FullStreamingModel) -> dict[str, torch.Tensor]:
    """The state dict of the streaming MFCC-LSTM's own ``EmotionLSTM`` class (``lstm.*``, ``fc.*``: load it with
    ``strict=True`` and ``torch.load(path, weights_only=True)``) giving ``full``'s calibrated logits on raw MFCC frames.

    The input standardisation ``(x - mean) / std`` folds exactly into the first LSTM layer's input weights and
    biases (``W_ih / std``, ``b_ih - W_ih @ (mean / std)``), and the temperature into ``fc`` (both divided by it).
    A streaming model without the class's ``lstm`` + ``fc`` layout keeps its own state dict.
    """
    model = full.model
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if not isinstance(getattr(model, "lstm", None), nn.LSTM) or not isinstance(getattr(model, "fc", None), nn.Linear) \
            or set(k.split(".")[0] for k in sd) != {"lstm", "fc"}:
        return full.state_dict()
    mean = full.normalize.mean.view(-1).double()
    std = full.normalize.std.view(-1).double()
    w = sd["lstm.weight_ih_l0"].double()
    sd["lstm.weight_ih_l0"] = (w / std).float()
    sd["lstm.bias_ih_l0"] = (sd["lstm.bias_ih_l0"].double() - w @ (mean / std)).float()
    t = float(full.temperature)
    sd["fc.weight"] = (sd["fc.weight"].double() / t).float()
    sd["fc.bias"] = (sd["fc.bias"].double() / t).float()
    return sd


def write_full_model(out: Path, model: nn.Module, stats: FeatureStats | None, feat_cfg: FeatureConfig,
                     temperature: float, labels: Sequence[str], say: Callable[[str], None]) -> dict[str, Any]:
    """``--save-full-model``: frame models get ``model_full.pth`` (a :class:`FullModel` pickle);
    streaming models get the streaming MFCC-LSTM's files: ``model.pth`` (a :class:`FullStreamingModel` pickle),
    ``model_weights.pth`` (the plain state dict of the
    streaming MFCC-LSTM's own ``EmotionLSTM``: :func:`plain_lstm_state_dict`) and ``model_torchscript.pt`` (the same model as
    TorchScript with the streaming MFCC-LSTM's ``forward(x, hidden)``: loads without emovox and without unpickling
    Python objects). Returns the ``model_meta.json`` entries that name them."""
    streaming = is_streaming(model)
    cls = FullStreamingModel if streaming else FullModel
    full = cls(copy.deepcopy(model).cpu().eval(), stats, feat_cfg, temperature, labels).eval()
    if not streaming:
        write_file(out / FULL_MODEL_FILE, torch_saver(full))
        return {"full_model": FULL_MODEL_FILE, "full_model_warning": f"{FULL_MODEL_FILE} is a pickle: loading it runs "
                "code; load it only from a trusted source"}
    from emovox.export.graphs import script_hidden_state_step

    scripted = script_hidden_state_step(full, calibrated=True)
    write_files([(out / STREAMING_FULL_MODEL_FILE, torch_saver(full)),
                      (out / STREAMING_WEIGHTS_FILE, torch_saver(plain_lstm_state_dict(full))),
                      (out / STREAMING_TORCHSCRIPT_FILE, lambda t: torch.jit.save(scripted, t))])
    if feat_cfg != preset(LSTM_LOOP_FEATURES):
        say(f"note: {STREAMING_FULL_MODEL_FILE} takes this model's own raw features; the streaming MFCC-LSTM's backend loop computes "
            f"its MFCC as the {LSTM_LOOP_FEATURES!r} preset does: train with --features "
            f"{LSTM_LOOP_FEATURES} for that loop to run the model unchanged")
    return {
        "full_model": STREAMING_FULL_MODEL_FILE,
        "full_model_weights": STREAMING_WEIGHTS_FILE,
        "full_model_torchscript": STREAMING_TORCHSCRIPT_FILE,
        "full_model_warning": (f"{STREAMING_FULL_MODEL_FILE} is a pickle: torch.load(path, weights_only=False) with emovox "
                               f"importable, and loading it runs code: only from a trusted source. "
                               f"{STREAMING_TORCHSCRIPT_FILE} needs neither (torch.jit.load)"),
    }

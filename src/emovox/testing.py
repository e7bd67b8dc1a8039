"""Helpers for tests of code that uses emovox (as audonnx ships ``testing.create_model``).

``create_model`` writes a small random model folder that every emovox entry point loads like a trained
one: useful to test an application's integration (serving, streaming, export) without training.
Its answers are random; never ship one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emovox.data.labels import taxonomy


def create_model(path: str | os.PathLike, *, name: str = "cnn", features: str = "logmel64",
                 labels: Sequence[str] | None = None, temperature: float = 1.0, seed: int = 0,
                 model_kwargs: dict[str, Any] | None = None) -> Path:
    """A random model folder at ``path``: family ``name`` on the feature preset ``features``, ``labels``
    (default ekman7) in that order, feature statistics around speech levels. Returns ``path``."""
    import torch

    from emovox.features import FeatureStats, preset
    from emovox.modelio import make_config, save_model
    from emovox.models import build_model

    labels = list(labels or taxonomy("ekman7"))
    torch.manual_seed(seed)
    cfg = preset(features)
    model = build_model(name, n_features=cfg.n_features, n_classes=len(labels), **(model_kwargs or {}))
    # centred around speech levels: log-mel around -40 dB; the streaming MFCC-LSTM's librosa MFCC c0 around -400
    if cfg.kind == "logmel":
        stats = FeatureStats([-40.0] * cfg.n_features, [20.0] * cfg.n_features)
    else:
        per_frame = bool(cfg.librosa_per_frame)
        stats = FeatureStats([-400.0 if per_frame else 0.0] + [0.0] * (cfg.n_features - 1),
                             [200.0 if per_frame else 30.0] + [30.0] * (cfg.n_features - 1))
    config = make_config(model_name=name, model_kwargs=model.kwargs, features=cfg, labels=labels, stats=stats,
                         temperature=temperature)
    save_model(path, model.eval(), config)
    return Path(path)

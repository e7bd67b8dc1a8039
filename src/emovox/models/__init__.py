"""Model families and their registry.

Every model is built from ``(name, n_features, n_classes, **kwargs)``; the kwargs are saved in the
model folder so a saved model is rebuilt from its own config, never from defaults that may change.

Two input conventions:

- frame models (``streaming = False``): ``forward(feats, lengths=None) -> logits`` with normalised
  features ``(batch, n_features, frames)``; ``lengths`` (frames per item) masks padding in pooling.
- streaming models (``streaming = True``, the LSTM): ``forward(x, hidden=None, lengths=None)
  -> (logits, hidden)`` with ``x`` of shape ``(batch, frames, n_features)``, including a single
  frame ``(batch, 1, n_features)``.
"""

from __future__ import annotations

import importlib

from torch import nn

MODELS: dict[str, type[nn.Module]] = {}
# Modules that register models on import (kept lazy so `import emovox` stays light).
_MODULES = ["cnn", "lstm", "cnn2d", "crnn", "fast", "ssl"]


def register(name: str):
    def deco(cls):
        cls.model_name = name
        MODELS[name] = cls
        return cls

    return deco


def load_all() -> None:
    for m in _MODULES:
        importlib.import_module(f"emovox.models.{m}")


def model_names() -> list[str]:
    load_all()
    return sorted(MODELS)


def build_model(name: str, *, n_features: int, n_classes: int, model_dir=None, **kwargs) -> nn.Module:
    """``model_dir``: the model folder being loaded, passed to families that keep files in it
    (``needs_model_dir = True``: the ssl family's bundled backbone); ignored by the others."""
    load_all()
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    if getattr(MODELS[name], "needs_model_dir", False):
        kwargs["model_dir"] = model_dir
    try:
        return MODELS[name](n_features=n_features, n_classes=n_classes, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad settings for model {name!r}: {e}") from e


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

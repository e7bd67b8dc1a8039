"""emovox: emotion recognition in speech (and text).

Public API only. Attributes are imported lazily (PEP 562), so ``import emovox`` is cheap and
nothing is loaded at import time:

>>> import emovox
>>> model = emovox.load_model()            # the shipped default speech model
>>> model.predict("clip.wav").label
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "AudioError": "emovox.audio",
    "load_audio": "emovox.audio",
    "is_silent": "emovox.audio",
    "FeatureConfig": "emovox.features",
    "LogMel": "emovox.features",
    "MFCC": "emovox.features",
    "LabelError": "emovox.data.labels",
    "LabelMap": "emovox.data.labels",
    "load_model": "emovox.inference",
    "available_models": "emovox.inference",
    "Prediction": "emovox.runtime.answers",
    "EmotionModel": "emovox.inference",
    "StreamingSession": "emovox.runtime.streaming",
    "Timeline": "emovox.runtime.answers",
    "SegmentOptions": "emovox.segments",
    "SegmentedRecording": "emovox.segments",
    "ModelLoadError": "emovox.modelio",
    "load_text_model": "emovox.text",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'emovox' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)

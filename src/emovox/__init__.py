"""emovox: emotion recognition in speech (and text).

Public API only; nothing heavy is loaded at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .audio import AudioError, is_silent, load_audio  # noqa: E402
from .features import MFCC, FeatureConfig, LogMel  # noqa: E402
from .labels import LabelError, LabelMap  # noqa: E402

__all__ = [
    "__version__",
    "AudioError",
    "FeatureConfig",
    "LabelError",
    "LabelMap",
    "LogMel",
    "MFCC",
    "is_silent",
    "load_audio",
]

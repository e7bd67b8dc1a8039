"""Defaults that several layers share, each defined once here (this module imports nothing from emovox).

Training defaults live on :class:`emovox.training.config.TrainConfig`, feature defaults on
:class:`emovox.features.FeatureConfig`, server settings on :class:`emovox.server.settings.Settings`;
what those and the library all need is below.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

#: Top scores below this are flagged ``low_confidence`` with a ``warning`` (Python API, CLI, server).
CONFIDENCE_THRESHOLD = 0.70
#: Added to the threshold for a recording whose measured quality is poor (noise, very low level, clipping, a
#: telephone band: :mod:`emovox.degrade.quality`): its answers need more confidence to be trusted.
POOR_INPUT_THRESHOLD_RAISE = 0.15
#: Fewest clips whose statistics re-standardise a probe model (``emovox adapt``, ``classify --adapt``).
MIN_ADAPTATION_CLIPS = 30

#: The longest clip the library decodes (:func:`emovox.audio.load_audio`, ``EmotionModel``, ``emovox classify``).
MAX_CLIP_S = 3600.0
#: The longest clip the server accepts in one upload, and the most audio a streaming session buffers.
MAX_SERVED_CLIP_S = 600.0
#: Clips longer than this are skipped (reported, not loaded) when featurising a corpus for training.
MAX_TRAINING_CLIP_S = 600.0

#: A model folder's files (:mod:`emovox.modelio` writes and reads them; the server hashes the weights file).
WEIGHTS_FILE = "best_model.pth"
CONFIG_FILE = "model_config.json"
LABELS_FILE = "labels.json"
#: A model folder's ONNX Runtime graphs (``runtime.json`` and the graphs it names) live in this subfolder.
RUNTIME_DIR = "onnx"

#: The cache folder's environment variable (features, backbone states, text embeddings).
CACHE_ENV = "EMOVOX_CACHE_DIR"
#: Its old name, still read (with a DeprecationWarning) when ``EMOVOX_CACHE_DIR`` is not set.
DEPRECATED_CACHE_ENV = "EMOVOX_CACHE"


def cache_env() -> Path | None:
    """The cache folder the environment names: ``$EMOVOX_CACHE_DIR``, else the deprecated
    ``$EMOVOX_CACHE``; None when neither is set."""
    value = os.environ.get(CACHE_ENV)
    if not value and os.environ.get(DEPRECATED_CACHE_ENV):
        value = os.environ[DEPRECATED_CACHE_ENV]
        warnings.warn(f"{DEPRECATED_CACHE_ENV} is deprecated: set {CACHE_ENV} instead", DeprecationWarning,
                      stacklevel=2)
    return Path(value).expanduser() if value else None

"""Export for devices: ONNX, Core ML and TorchScript, waveform-in and feature-in, checked against PyTorch.

>>> from emovox.export import export_model
>>> report = export_model("runs/cnn", "exports/cnn", formats=["onnx", "coreml"], quantize="int8")
>>> report.checks["waveform"]["onnx"]["max_abs_diff"]     # vs the PyTorch pipeline

An export folder holds, per input kind (``waveform``, ``features``):

- ``emotion_<kind>.onnx`` (+ ``emotion_<kind>.int8.onnx`` with ``quantize="int8"``),
- ``EmotionClassifierWaveform.mlmodel`` / ``.mlpackage`` and ``EmotionClassifier.mlmodel`` /
  ``.mlpackage`` (the feature-in model, the Core ML mobile CNN's name),
- ``emotion_<kind>.pt`` (TorchScript),

and ``preprocessing.json`` (how to compute the features exactly), ``export.json`` (files,
tensor names and shapes, labels, temperature, check results, versions), ``model_config.json``
and ``labels.json``. See ``docs/device-integration.md``. ``emovox train --export`` writes such a
folder as ``export/`` inside the trained model folder and links the feature-in ONNX and Core ML files
beside ``best_model.pth`` under the Core ML mobile CNN's names (:func:`export_trained_model`).

Modules: :mod:`.graphs` (trace-safe graphs), :mod:`.spec` (names and shapes), one writer per
format, :mod:`.checks` (parity), :mod:`.preprocessing` and :mod:`.exporter` (the whole run).
"""

from __future__ import annotations

from emovox.export.checks import DEFAULT_TOLERANCE, synthetic_clips
from emovox.export.coreml_export import FLAVOURS as COREML_FLAVOURS
from emovox.export.exporter import (
    FORMATS,
    MANIFEST_FILE,
    PREPROCESSING_FILE,
    SEED000_FILES,
    TRAIN_EXPORT_DIR,
    ExportError,
    ExportReport,
    check_dependencies,
    export_model,
    export_trained_model,
)
from emovox.export.onnx_export import DEFAULT_OPSET
from emovox.export.preprocessing import preprocessing_spec
from emovox.export.spec import INPUT_KINDS

__all__ = [
    "COREML_FLAVOURS",
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "INPUT_KINDS",
    "MANIFEST_FILE",
    "PREPROCESSING_FILE",
    "SEED000_FILES",
    "TRAIN_EXPORT_DIR",
    "ExportError",
    "ExportReport",
    "check_dependencies",
    "export_model",
    "export_trained_model",
    "preprocessing_spec",
    "synthetic_clips",
]

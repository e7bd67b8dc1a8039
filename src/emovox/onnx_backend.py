"""Run an exported waveform-in ONNX model with onnxruntime, without PyTorch.

>>> from emovox.onnx_backend import OnnxModel
>>> m = OnnxModel("exports/cnn")               # a folder written by `emovox export`, or a .onnx file
>>> logits = m.predict_logits(waves)           # (batch, samples) float32 at m.sample_rate_hz
>>> m.labels, m.temperature                    # probabilities = softmax(logits / temperature)

This module imports only NumPy, onnxruntime and the standard library, so a server can run
inference without PyTorch installed. Labels, temperature and sample rate come from the model's
own metadata (``metadata_props["emovox"]``, written by the exporter), or else from the
``export.json`` beside it.

The graph holds the whole front-end (STFT as a convolution, mel, log, crop/pad, zero-frame
skipping, normalisation), so it takes raw 16 kHz mono samples in [-1, 1].
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FILE = "export.json"
WAVEFORM_FILES = ("emotion_waveform.onnx", "emotion_waveform.int8.onnx")


class OnnxModelError(ValueError):
    """An ONNX model or export folder that cannot be used; the message names the file and the problem."""


def _find_model(path: Path, *, quantized: bool) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise OnnxModelError(f"ONNX model not found: {path}")
    manifest = path / MANIFEST_FILE
    key = "onnx_int8" if quantized else "onnx"
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text()).get("files", {})
        except (OSError, json.JSONDecodeError) as e:
            raise OnnxModelError(f"{manifest}: unreadable export manifest ({e})") from e
        name = (files.get(key) or {}).get("waveform")
        if name and (path / name).is_file():
            return path / name
    candidate = path / WAVEFORM_FILES[1 if quantized else 0]
    if candidate.is_file():
        return candidate
    what = "int8 " if quantized else ""
    raise OnnxModelError(
        f"{path}: no {what}waveform-input ONNX model here (expected {candidate.name}); export one with "
        f"`emovox export --model M --format onnx --input waveform{' --quantize int8' if quantized else ''} "
        f"--output-dir {path}`"
    )


class OnnxModel:
    """A waveform-in emotion model in onnxruntime: ``predict_logits(waves) -> (batch, n_labels)``.

    ``path``: an export folder (its ``emotion_waveform.onnx``, or the int8 file with
    ``quantized=True``) or a ``.onnx`` file. ``threads``: onnxruntime intra-op threads
    (``None``: onnxruntime's default).
    """

    def __init__(self, path: str | os.PathLike, *, quantized: bool = False, threads: int | None = None,
                 providers: list[str] | None = None):
        import onnxruntime as ort

        self.path = _find_model(Path(path), quantized=quantized)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise OnnxModelError(f"{self.path}: cannot load ONNX model: {str(e).splitlines()[0][:300]}") from e
        meta = self._metadata()
        if meta.get("input_kind", "waveform") != "waveform":
            raise OnnxModelError(f"{self.path}: a {meta.get('input_kind')}-input model; OnnxModel runs the "
                                 "waveform-input export (emotion_waveform.onnx)")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise OnnxModelError(f"{self.path}: expected one (batch, samples) input, found "
                                 f"{[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        try:
            self.labels: list[str] = [str(x) for x in meta["labels"]]
            self.sample_rate_hz: int = int(meta["sample_rate_hz"])
            self.temperature: float = float(meta.get("temperature", 1.0))
        except (KeyError, TypeError, ValueError) as e:
            raise OnnxModelError(f"{self.path}: no emovox metadata (labels, sample_rate_hz) in the model or "
                                 f"in {MANIFEST_FILE} beside it") from e
        n_out = outputs[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.labels):
            raise OnnxModelError(f"{self.path}: {n_out} outputs but {len(self.labels)} labels {self.labels}")
        self.metadata = meta
        self.config: dict[str, Any] = self._config()

    def _metadata(self) -> dict[str, Any]:
        props = self.session.get_modelmeta().custom_metadata_map
        if "emovox" in props:
            try:
                return json.loads(props["emovox"])
            except json.JSONDecodeError as e:
                raise OnnxModelError(f"{self.path}: corrupt emovox metadata ({e})") from e
        manifest = self.path.parent / MANIFEST_FILE
        if manifest.is_file():
            try:
                m = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise OnnxModelError(f"{manifest}: unreadable export manifest ({e})") from e
            return {"labels": m.get("labels"), "sample_rate_hz": m.get("sample_rate_hz"),
                    "temperature": m.get("temperature", 1.0), "input_kind": "waveform"}
        return {}

    def _config(self) -> dict[str, Any]:
        cfg = self.path.parent / "model_config.json"
        if cfg.is_file():
            try:
                return json.loads(cfg.read_text())
            except (OSError, json.JSONDecodeError):
                return {}
        return {}

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, labels={self.labels})"

    def predict_logits(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Logits ``(batch, n_labels)`` for ``waves`` ``(batch, samples)`` (or one clip ``(samples,)``).

        ``lengths`` (samples per clip) marks a zero-padded batch: each clip then runs on its own
        samples only (clips of equal length together), which is what the PyTorch pipeline's
        length masking computes.
        """
        x = np.asarray(waves, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise ValueError(f"waves must be (batch, samples) or (samples,), got shape {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        if lengths is None:
            return self._run(x)
        n = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if n.shape[0] != x.shape[0] or (n < 1).any() or (n > x.shape[1]).any():
            raise ValueError(f"lengths must give 1..{x.shape[1]} samples for each of the {x.shape[0]} clips")
        out = np.zeros((x.shape[0], len(self.labels)), np.float32)
        for length in np.unique(n):
            idx = np.flatnonzero(n == length)
            out[idx] = self._run(x[idx, :length])
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x)})[0]

    def probabilities(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probabilities: ``softmax(logits / temperature)``."""
        z = self.predict_logits(waves, lengths).astype(np.float64) / self.temperature
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

"""A Hugging Face audio-classification checkpoint as an emovox speech model backend.

The folder is what ``model.save_pretrained(d)`` and ``feature_extractor.save_pretrained(d)``
write for ``Wav2Vec2ForSequenceClassification``, ``HubertForSequenceClassification``,
``WavLMForSequenceClassification``, ``WhisperForAudioClassification`` (or any other class that
``AutoModelForAudioClassification`` builds): ``config.json`` with ``id2label``,
``preprocessor_config.json`` (the feature extractor, which sets the sample rate) and
``model.safetensors``. A ``labels.json`` beside them may name the labels instead of ``id2label``.

:func:`emovox.load_model` (hence ``--model`` and ``AUDIO_MODEL_DIR``) uses this backend for any
folder with a ``config.json`` and no ``best_model.pth``; answers have the same form as emovox's
own models'. Label names are normalised to emovox's spellings where they are known
(``neu``→``neutral``, ``hap``→``happy``, ``ang``→``angry``...), so ``labels=`` folding and music
moods work. Probabilities are the plain softmax (temperature 1: the checkpoint records no
calibration). Whisper's feature extractor pads or cuts every clip to 30 s, so a Whisper
classifier sees at most the first 30 s of a clip (use timelines for longer recordings).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from emovox.data.labels import LabelError, canonical
from emovox.defaults import WEIGHTS_FILE
from emovox.modelio import ModelLoadError
from emovox.pretrained.hfcheckpoint import (
    CheckpointError,
    architecture,
    label_names,
    quiet_loading,
    read_hf_config,
    weights_file,
)

log = logging.getLogger(__name__)

FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"
ARCHITECTURE_SUFFIXES = ("ForSequenceClassification", "ForAudioClassification")


def is_hf_audio_folder(path: Path) -> bool:
    """A ``save_pretrained`` folder rather than an emovox model folder (which holds ``best_model.pth``)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / WEIGHTS_FILE).exists()


def emovox_names(labels: list[str]) -> list[str]:
    """Known spellings → emovox's canonical names; unknown names kept. Unchanged if that would merge two."""
    out = []
    for lab in labels:
        try:
            out.append(canonical(lab))
        except LabelError:
            out.append(lab.strip())
    return out if len(set(out)) == len(out) else list(labels)


class HFAudioBackend:
    """``AutoFeatureExtractor`` + ``AutoModelForAudioClassification`` behind emovox's backend protocol."""

    temperature = 1.0

    def __init__(self, folder: str | Path):
        import torch

        folder = Path(folder)
        try:
            from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
        except ImportError as e:
            raise ModelLoadError(f"{folder}: a Hugging Face checkpoint needs transformers "
                                 f"(pip install 'emovox[ssl]'): {e}") from e
        self._torch = torch
        try:
            cfg = read_hf_config(folder)
            arch = architecture(cfg, folder, suffixes=ARCHITECTURE_SUFFIXES)
            source_labels = label_names(folder, cfg)
            self.weights_file = weights_file(folder)
        except CheckpointError as e:
            raise ModelLoadError(str(e)) from e
        if not (folder / FEATURE_EXTRACTOR_FILE).is_file():
            raise ModelLoadError(f"{folder / FEATURE_EXTRACTOR_FILE}: missing; save the feature extractor beside the "
                                 "model (feature_extractor.save_pretrained(folder))")
        try:
            with quiet_loading():
                self.feature_extractor = AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
                self.model = AutoModelForAudioClassification.from_pretrained(
                    str(folder), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelLoadError(f"{folder}: cannot load {arch} ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300]})") from e
        if self.model.config.num_labels != len(source_labels):
            raise ModelLoadError(f"{folder}: the model has {self.model.config.num_labels} outputs but "
                                 f"{len(source_labels)} labels")
        self.model.eval()
        self.labels = emovox_names(source_labels)
        self.sample_rate_hz = int(self.feature_extractor.sampling_rate)
        # Whisper's extractor pads every clip to 30 s (the model needs exactly 3000 frames); others pad to
        # the longest clip of a batch
        self._padding: dict[str, Any] = {} if cfg.get("model_type") == "whisper" else {"padding": True}
        self.config = {"model": {"name": f"hf-{cfg.get('model_type', 'unknown')}", "architecture": arch},
                       "labels": self.labels, "source_labels": source_labels, "emovox_version": None,
                       "sample_rate_hz": self.sample_rate_hz, "temperature": 1.0}
        log.info("speech model %s: %s, labels %s, %d Hz", folder, arch, self.labels, self.sample_rate_hz)

    def predict_logits(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Logits ``(batch, n_labels)``. Clips of different lengths run separately: the feature
        extractor normalises each clip over its own samples, and not every model masks padding."""
        n = np.full(len(waves), waves.shape[1]) if lengths is None else np.asarray(lengths)
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float32)
        for length in np.unique(n):
            idx = np.flatnonzero(n == length)
            out[idx] = self._logits([np.asarray(waves[i, :length], dtype=np.float32) for i in idx])
        return out

    def _logits(self, clips: list[np.ndarray]) -> np.ndarray:
        torch = self._torch
        inputs = self.feature_extractor(clips, sampling_rate=self.sample_rate_hz, return_tensors="pt",
                                        **self._padding)
        with torch.inference_mode():
            return self.model(**inputs).logits.float().cpu().numpy()

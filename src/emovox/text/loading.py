"""Loading a text model from a folder, whichever of the two formats it is in."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .data import TextModelError
from .hf_classifier import is_hf_classifier_folder, load_hf_classifier
from .model import CONFIG_FILE, TextModel, default_model_path, load_text_folder


def load_text_model(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                    encoder: str | os.PathLike | None = None, check_encoder: bool = True) -> TextModel:
    """Load a text model folder (default: the shipped GoEmotions model), or a Hugging Face
    sequence-classification folder with seed 004's ``labels.json`` and ``inference_config.json``
    (see :mod:`emovox.text.hf_classifier`).

    ``encoder`` overrides where the encoder is found (a moved checkpoint folder); its
    fingerprint must still match the one recorded at training unless ``check_encoder=False``.
    Raises :class:`TextModelError` naming the file when something is missing or corrupt.
    """
    root = default_model_path() if path is None else Path(path)
    if not root.is_dir():
        raise TextModelError(f"{root}: not a text model folder (it should hold {CONFIG_FILE})")
    if is_hf_classifier_folder(root):  # seed 004: a save_pretrained() sequence classifier
        return load_hf_classifier(root, device=device)
    return load_text_folder(root, device=device, encoder=encoder, check_encoder=check_encoder)

"""Local Hugging Face checkpoint folders (``save_pretrained`` output), opened safely and quietly.

Shared by the audio adapter (:mod:`emovox.pretrained.hf_audio`) and the text adapter
(:mod:`emovox.text.hf_classifier`): what architecture a folder holds, which weights file it has
(safetensors only: loading never unpickles), and its label names (``labels.json`` beside it, else
the config's ``id2label``). Nothing is ever downloaded: folders are opened with
``local_files_only=True``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emovox.errors import CheckpointError

HF_CONFIG = "config.json"
LABELS_FILE = "labels.json"
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / HF_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; a Hugging Face checkpoint folder holds config.json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return cfg


def architecture(cfg: dict[str, Any], folder: Path, *, suffixes: tuple[str, ...]) -> str:
    """The checkpoint's class name (``config.json``'s ``architectures[0]``); it must end with one of
    ``suffixes`` (``ForSequenceClassification``, ...)."""
    names = cfg.get("architectures") or []
    name = str(names[0]) if names else ""
    if not name.endswith(suffixes):
        raise CheckpointError(
            f"{Path(folder) / HF_CONFIG}: architecture {name or '(none recorded)'!r} is not a classifier; "
            f"accepted: a *{' or *'.join(suffixes)} checkpoint saved with save_pretrained()"
        )
    return name


def weights_file(folder: Path) -> Path:
    """The safetensors weights (or their shard index); refuses pickled ``pytorch_model.bin``."""
    folder = Path(folder)
    for name in SAFETENSORS_FILES:
        if (folder / name).is_file():
            return folder / name
    pickled = [n for n in PICKLE_FILES if (folder / n).is_file()]
    if pickled:
        raise CheckpointError(
            f"{folder / pickled[0]}: pickled weights are not loaded (loading them can run code); convert once "
            "with model.save_pretrained(folder, safe_serialization=True), which writes model.safetensors"
        )
    raise CheckpointError(f"{folder}: no model.safetensors (weights saved with save_pretrained())")


def is_generic(names: list[str]) -> bool:
    """True for transformers' placeholder names (``LABEL_0``, ``LABEL_1``, ...)."""
    return all(_GENERIC_LABEL.match(n) for n in names)


def label_names(folder: Path, cfg: dict[str, Any]) -> list[str]:
    """Output labels in order: ``labels.json`` (an ordered list) when present, else ``id2label``.

    When both name the labels they must agree; placeholder ``LABEL_i`` names count as unnamed.
    """
    folder = Path(folder)
    id2label = cfg.get("id2label") or {}
    try:
        from_config = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / HF_CONFIG}: id2label keys must be integers ({e})") from e
    n = len(from_config) or int(cfg.get("num_labels", 0))
    path = folder / LABELS_FILE
    if not path.is_file():
        if not from_config or is_generic(from_config):
            raise CheckpointError(
                f"{folder}: the labels have no names (config.json's id2label is "
                f"{'missing' if not from_config else 'LABEL_0, LABEL_1, ...'}); write {LABELS_FILE} "
                "(a JSON list of the labels in output order) or set id2label"
            )
        return from_config
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(listed, list) or not all(isinstance(x, str) and x.strip() for x in listed):
        raise CheckpointError(f"{path}: expected a JSON list of label names in output order")
    if len(set(listed)) != len(listed):
        raise CheckpointError(f"{path}: labels repeat ({listed})")
    if n and len(listed) != n:
        raise CheckpointError(f"{path}: {len(listed)} labels, but the model in {folder} has {n} outputs")
    if from_config and not is_generic(from_config) and from_config != listed:
        raise CheckpointError(f"{path}: labels {listed} differ from config.json's id2label {from_config}; "
                              "make them agree (the order is the model's output order)")
    return listed


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar on stderr while opening a local folder."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()

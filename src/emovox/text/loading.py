"""Loading a text model from a folder, whichever of the two formats it is in, on either runtime.

Backends: ``onnx`` (ONNX Runtime + ``tokenizers``: no PyTorch; the folder's ``onnx/`` files, see
:mod:`emovox.text.runtime`), ``torch`` (PyTorch + transformers) and ``auto`` (the default): ONNX Runtime
when the folder carries its graph, else PyTorch. A graph built from other weights than the folder's is
refused with every backend but ``torch``, never used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .data import TextModelError
from .ensemble import is_ensemble_folder, load_ensemble
from .model import CONFIG_FILE, TextModel, model_path
from .runtime import has_runtime, load_onnx_text_model

BACKENDS = ("auto", "onnx", "torch")


def _is_hf_classifier(root: Path) -> bool:
    return (root / "config.json").is_file()  # emovox's own folders never hold one (hf_classifier imports torch)


def choose_backend(root: Path, backend: str, *, torch_only: str | None = None) -> str:
    """``onnx`` or ``torch`` for this folder (see the module docstring); a clear error when not possible.
    ``torch_only``: why the caller's options need PyTorch, if they do."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return "torch"
    why = ("a Hugging Face classifier folder runs on PyTorch" if _is_hf_classifier(root) else
           torch_only if torch_only else
           None if has_runtime(root) else
           f"{root} has no ONNX Runtime graph (onnx/runtime.json); write one with `emovox text-export --model {root}`")
    if why is None:
        return "onnx"
    if backend == "onnx":
        raise TextModelError(f"backend 'onnx': {why}")
    return "torch"


def load_text_model(path: str | os.PathLike | None = None, *, backend: str = "auto", device: Any = "cpu",
                    encoder: str | os.PathLike | None = None, check_encoder: bool = True,
                    threads: int | None = None) -> TextModel:
    """Load a text model folder (default: the shipped GoEmotions model; ``'mpnet'``, ``'ensemble'``: the other
    shipped ones), an ensemble folder (:mod:`emovox.text.ensemble`: each member on ``backend``), or a Hugging Face
    sequence-classification folder with seed 004's ``labels.json`` and ``inference_config.json``
    (see :mod:`emovox.text.hf_classifier`).

    ``backend``: ``'auto'`` (ONNX Runtime when the folder has its graph, else PyTorch), ``'onnx'`` or
    ``'torch'``. ``threads``: ONNX Runtime's intra-op threads (None: the cores this process may use).
    ``device``, ``encoder`` and ``check_encoder`` are PyTorch's: ``encoder`` overrides where the encoder is
    found (a moved checkpoint folder); its fingerprint must still match the one recorded at training unless
    ``check_encoder=False``. Raises :class:`TextModelError` naming the file when something is missing,
    corrupt or stale.
    """
    root = model_path(path)
    if not root.is_dir():
        raise TextModelError(f"{root}: not a text model folder (it should hold {CONFIG_FILE})")
    if is_ensemble_folder(root):
        if encoder is not None:
            raise TextModelError(f"{root}: encoder= moves one model's encoder; an ensemble's members each use their own")
        return load_ensemble(root, lambda member: load_text_model(member, backend=backend, device=device,
                                                                  check_encoder=check_encoder, threads=threads))
    torch_only = ("encoder= (a moved encoder) is PyTorch's" if encoder is not None else
                  "check_encoder=False is PyTorch's" if not check_encoder else
                  f"device={device!r} is PyTorch's" if str(device) != "cpu" else None)
    if choose_backend(root, backend, torch_only=torch_only) == "onnx":
        return load_onnx_text_model(root, threads=threads)
    return _load_torch(root, device=device, encoder=encoder, check_encoder=check_encoder)


def _load_torch(root: Path, **kw: Any) -> TextModel:
    try:
        from .hf_classifier import is_hf_classifier_folder, load_hf_classifier
        from .torch_model import load_text_folder
    except ImportError as e:
        raise TextModelError(f"{root}: running this model on PyTorch needs emovox[text] ({e}); a folder with an "
                             "ONNX Runtime graph (emovox text-export) runs without it") from e
    if is_hf_classifier_folder(root):  # seed 004: a save_pretrained() sequence classifier
        return load_hf_classifier(root, device=kw["device"])
    return load_text_folder(root, **kw)

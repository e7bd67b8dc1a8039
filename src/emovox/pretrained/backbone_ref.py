"""A backbone's identity (:class:`BackboneRef`, saved in the model config): where it came from plus an architecture hash and a weights hash."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emovox.errors import BackboneError
from emovox.pretrained import whisper_weights

#: Folder name of a backbone bundled inside a model folder (``--bundle-backbone``).
BUNDLE_DIR = "backbone"
#: Config fields that define the architecture (hashed into ``config_hash``; absent ones are skipped).
ARCH_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "feat_proj_layer_norm",
    "do_stable_layer_norm", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "layer_norm_eps",
    "num_buckets", "max_bucket_distance",
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")



@dataclass
class BackboneRef:
    """Where a backbone comes from and what it is; saved in the model config (``model.kwargs.backbone``)."""

    source: str  # hub id, packaged Whisper name, absolute folder, or BUNDLE_DIR (relative to the model folder)
    kind: str  # "hub" | "package" | "local" | "bundled"
    revision: str | None = None  # hub only: branch, tag or commit
    config_hash: str = ""
    weights_hash: str = ""
    model_type: str = ""
    num_layers: int = 0
    hidden_size: int = 0
    normalize: bool = True
    normalize_from: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneRef:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        where = {"hub": "Hugging Face model id", "package": "installed package", "local": "local folder",
                 "bundled": "bundled in the model folder"}
        rev = f" at revision {self.revision}" if self.revision else ""
        arch = f", {self.model_type} {self.num_layers} layers x {self.hidden_size}" if self.model_type else ""
        return f"{self.source!r} ({where.get(self.kind, self.kind)}{rev}{arch})"


def _looks_like_hub_id(s: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", s)) and ".." not in s


def parse_source(name_or_dir: str | os.PathLike, *, revision: str | None = None) -> BackboneRef:
    """A hub id or a folder → an (unloaded) :class:`BackboneRef`; a missing folder raises at once."""
    s = os.fspath(name_or_dir).strip()
    if not s:
        raise BackboneError("no backbone given: pass a Hugging Face model id (e.g. facebook/wav2vec2-base) "
                            "or a local checkpoint folder")
    if s in whisper_weights.PACKAGED:
        return BackboneRef(source=s, kind="package")
    p = Path(s).expanduser()
    if p.is_dir():
        return BackboneRef(source=str(p.resolve()), kind="local")
    if p.exists() or not _looks_like_hub_id(s) or s.startswith(("./", "../", "~", "/")):
        raise BackboneError(f"backbone folder {p} {'is not a folder' if p.exists() else 'does not exist'}. "
                            + HOW_TO_PROVIDE.format(src="ID"))
    return BackboneRef(source=s, kind="hub", revision=revision)


HOW_TO_PROVIDE = (
    "A backbone is a Hugging Face model id (downloaded when the hub is reachable) or a folder written by "
    "save_pretrained (config.json, model.safetensors or pytorch_model.bin, optionally preprocessor_config.json). "
    "To get a local copy where there is a network: `huggingface-cli download {src}` (it then loads from the "
    "Hugging Face cache, also with HF_HUB_OFFLINE=1), or `python -c \"from transformers import AutoModel, "
    "AutoFeatureExtractor; AutoModel.from_pretrained('{src}').save_pretrained('DIR'); "
    "AutoFeatureExtractor.from_pretrained('{src}').save_pretrained('DIR')\"` and pass --backbone DIR "
    "(train with --bundle-backbone to keep a copy inside the model folder)."
)



def architecture(config) -> dict[str, Any]:
    """The architecture fields (:data:`ARCH_KEYS`) of a transformers config (or its dict)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: (list(d[k]) if isinstance(d[k], (list, tuple)) else d[k]) for k in ARCH_KEYS if k in d}


def config_hash(config) -> str:
    """sha256 (16 hex digits) over the architecture fields of a transformers config."""
    return hashlib.sha256(json.dumps(architecture(config), sort_keys=True).encode()).hexdigest()[:16]


def weights_hash(module: nn.Module) -> str:
    """sha256 (16 hex digits) over every parameter's and buffer's bytes, independent of names and order."""
    digests = []
    for t in module.state_dict().values():
        a = t.detach().cpu().contiguous()
        h = hashlib.sha1(f"{a.dtype}{tuple(a.shape)}".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy() if a.numel() else b"")
        digests.append(h.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]

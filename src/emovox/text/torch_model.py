"""An emovox text model on PyTorch: the encoder (transformers) mean-pooled into the MLP head.

``emovox text --backend torch`` and training use it; inference runs on ONNX Runtime by default
(:mod:`emovox.text.runtime`), which this module's scores are checked against.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data import TextModelError
from .encoder import Encoder, EncoderRef, fingerprint, resolve_encoder
from .head import MLPHead
from .model import CONFIG_FILE, DELTA_FILE, HEAD_FILE, TextModel, read_model_config


class TorchTextModel(TextModel):
    """Tokenizer + transformer + MLP head in PyTorch. Build with :func:`emovox.text.load_text_model`."""

    backend = "torch"

    def __init__(self, path: Path, config: dict, encoder: Encoder, head: MLPHead):
        super().__init__(path, config)
        self.encoder, self.head = encoder, head

    @torch.inference_mode()
    def scores_from_embeddings(self, emb: np.ndarray | torch.Tensor) -> np.ndarray:
        self.head.eval()
        x = torch.as_tensor(np.asarray(emb, dtype=np.float32)).to(self.encoder.device)
        return torch.sigmoid(self.head(x)).double().cpu().numpy()

    def probabilities(self, texts: Sequence[str], *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sigmoid scores ``(n, n_labels)``, token counts and truncation flags for valid texts."""
        ids, n_tokens, truncated = self.encoder.tokenize(list(texts))
        emb = self.encoder.embed_ids(ids, batch_size=batch_size)
        return self.scores_from_embeddings(emb), n_tokens, truncated


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise TextModelError(f"{path}: missing (weights file named in {CONFIG_FILE})")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TextModelError(f"{path}: cannot read safetensors weights ({e})") from e


def _load_head(root: Path, cfg: dict) -> MLPHead:
    hcfg = cfg["head"]
    head_path = root / hcfg.get("file", HEAD_FILE)
    state = read_safetensors(head_path)
    try:
        head = MLPHead(int(hcfg["input_dim"]), len(cfg["labels"]), hidden_dim=int(hcfg["hidden_dim"]),
                       dropout=float(hcfg.get("dropout", 0.0)))
        head.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise TextModelError(f"{head_path}: does not match the head described in {CONFIG_FILE} ({e})") from e
    return head


def load_text_folder(root: Path, *, device: str | torch.device = "cpu", encoder: str | os.PathLike | None = None,
                     check_encoder: bool = True) -> TorchTextModel:
    """Load a text model folder in emovox's own format on PyTorch (:func:`emovox.text.load_text_model` takes
    Hugging Face classifier folders too, and runs on ONNX Runtime by default). Arguments as there."""
    cfg = read_model_config(root)
    head = _load_head(root, cfg)
    ecfg = cfg["encoder"]
    ref: EncoderRef = resolve_encoder(encoder if encoder is not None else (ecfg.get("path") or ecfg["name"]))
    if check_encoder and ecfg.get("fingerprint") and fingerprint(ref.path) != ecfg["fingerprint"]:
        raise TextModelError(
            f"{ref.path}: encoder weights differ from those the model in {root} was trained with "
            f"(fingerprint {ecfg['fingerprint']}); install the same encoder or pass check_encoder=False"
        )
    enc = Encoder(ref, max_length=int(cfg["max_length"]), device=device)
    if enc.hidden_size != head.input_dim:
        raise TextModelError(f"{root / cfg['head'].get('file', HEAD_FILE)}: head takes {head.input_dim}-d vectors, "
                             f"encoder {ref.name!r} gives {enc.hidden_size}")
    dcfg = cfg.get("encoder_delta")
    if dcfg:
        delta_path = root / dcfg.get("file", DELTA_FILE)
        enc.apply_delta(read_safetensors(delta_path), source=str(delta_path))
    enc.model.eval()
    head.to(enc.device).eval()
    return TorchTextModel(root, cfg, enc, head)

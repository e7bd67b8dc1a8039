"""A plain Hugging Face sequence classifier as a text emotion model (seed 004's ``ai/models/text/model``).

The folder is what ``model.save_pretrained(d)`` and ``tokenizer.save_pretrained(d)`` write for
any ``*ForSequenceClassification`` (BERT, RoBERTa, DistilBERT, ...), plus seed 004's
``labels.json`` (the labels in output order; else the config's ``id2label`` names them) and
``inference_config.json``, whose keys may be spelled as below (other keys, such as a model name
or notes, are kept and ignored):

| setting | accepted keys | default |
|---|---|---|
| per-label thresholds | ``thresholds`` or ``per_class_thresholds``: a list in label order, or ``{label: t}`` (labels left out use the global threshold) | the global threshold |
| global threshold | ``threshold`` or ``global_threshold`` | 0.5 |
| tokens per text | ``max_len``, ``max_length`` or ``max_seq_length`` | the tokenizer's limit, at most the model's positions and 512 |
| labels per text | ``top_k`` (0: no cap) | 0 |
| at least one label | ``always_one`` | false |
| tokenizer | ``tokenizer``, ``tokenizer_name`` or ``tokenizer_name_or_path``: a folder, or a name in the local Hugging Face cache; used when the model folder has no tokenizer files | the model folder |

Scores are the sigmoid of each logit (multi-label), decided with the rule of
:mod:`emovox.text.metrics`; predictions have the same form as emovox's own text models. Weights
are read from safetensors only; nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovox.pretrained.hfcheckpoint import (
    CheckpointError,
    architecture,
    label_names,
    quiet_loading,
    read_hf_config,
    weights_file,
)

from .data import TextModelError
from .encoder import padded_batches, tokenize
from .model import CONFIG_FILE, TextModel, read_json

log = logging.getLogger(__name__)

FORMAT = "hf-sequence-classification"
DEFAULT_THRESHOLD = 0.5
MAX_LENGTH_CAP = 512
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
#: inference_config.json spellings accepted for each setting (first is emovox's).
KEYS = {
    "thresholds": ("thresholds", "per_class_thresholds"),
    "global_threshold": ("global_threshold", "threshold"),
    "max_length": ("max_length", "max_len", "max_seq_length"),
    "top_k": ("top_k",),
    "always_one": ("always_one",),
    "tokenizer": ("tokenizer", "tokenizer_name", "tokenizer_name_or_path"),
}


def is_hf_classifier_folder(root: Path) -> bool:
    """A ``save_pretrained`` folder (emovox's own text model folders never hold a ``config.json``)."""
    return (Path(root) / "config.json").is_file()


def _pick(raw: dict[str, Any], setting: str, where: Path) -> Any:
    found = {k: raw[k] for k in KEYS[setting] if raw.get(k) is not None}
    if len({repr(v) for v in found.values()}) > 1:
        raise TextModelError(f"{where}: {' and '.join(found)} disagree ({found}); keep one")
    return next(iter(found.values()), None)


def _probability(value: Any, what: str, where: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise TextModelError(f"{where}: {what} must be a number in (0, 1), got {value!r}")
    return float(value)


def resolve_thresholds(value: Any, labels: Sequence[str], global_threshold: float, where: Path) -> dict[str, float]:
    """``{label: threshold}`` from a list in label order, a dict by label, or ``None`` (all global)."""
    labels = list(labels)
    if value is None:
        return dict.fromkeys(labels, global_threshold)
    if isinstance(value, list):
        if len(value) != len(labels):
            raise TextModelError(f"{where}: 'thresholds' lists {len(value)} values for {len(labels)} labels; "
                                 "give one per label in labels.json order, or a {label: threshold} object")
        return {lab: _probability(t, f"threshold of {lab!r}", where) for lab, t in zip(labels, value)}
    if isinstance(value, dict):
        unknown = [k for k in value if k not in labels]
        if unknown:
            raise TextModelError(f"{where}: thresholds for unknown labels {unknown}; the labels are {labels}")
        return {lab: _probability(value[lab], f"threshold of {lab!r}", where) if lab in value else global_threshold
                for lab in labels}
    raise TextModelError(f"{where}: 'thresholds' must be a list in label order or a {{label: threshold}} object, "
                         f"got {type(value).__name__}")


def _load_tokenizer(root: Path, name: str | None):
    from transformers import AutoTokenizer

    if _has_tokenizer(root):
        source = root
    elif name is None:
        raise TextModelError(f"{root}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) and no 'tokenizer' "
                             f"in {CONFIG_FILE}; save the tokenizer into the folder (tokenizer.save_pretrained)")
    else:
        source = next((p for p in (Path(name).expanduser(), root / name) if p.is_dir()), name)
    try:
        with quiet_loading():
            return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise TextModelError(
            f"{root}: cannot load the tokenizer {str(source)!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it must be a folder or already in the local Hugging Face cache (nothing is downloaded): save the "
            "tokenizer into the model folder with tokenizer.save_pretrained"
        ) from e


def _max_length(value: Any, tokenizer, model_cfg: dict[str, Any], where: Path) -> int:
    positions = int(model_cfg.get("max_position_embeddings") or MAX_LENGTH_CAP)
    if value is None:
        limit = getattr(tokenizer, "model_max_length", None) or MAX_LENGTH_CAP
        return int(min(limit, positions, MAX_LENGTH_CAP))
    if isinstance(value, bool) or not isinstance(value, int) or not 4 <= value <= positions:
        raise TextModelError(f"{where}: max_len must be a whole number of tokens in [4, {positions}] "
                             f"(the model's positions), got {value!r}")
    return value


def _top_k(value: Any, where: Path) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TextModelError(f"{where}: top_k must be a whole number >= 0 (0: no cap), got {value!r}")
    return value


def _inference_config(root: Path, labels: list[str], model_cfg: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Seed 004's ``inference_config.json`` → emovox's text model config (see the module's table), and
    the tokenizer it names."""
    where = root / CONFIG_FILE
    raw = read_json(where) if where.is_file() else {}
    if not isinstance(raw, dict):
        raise TextModelError(f"{where}: expected a JSON object")
    if raw.get("labels") is not None and list(raw["labels"]) != labels:
        raise TextModelError(f"{where}: 'labels' differ from the model's labels {labels}")
    global_t = _pick(raw, "global_threshold", where)
    global_t = DEFAULT_THRESHOLD if global_t is None else _probability(global_t, "threshold", where)
    tok_name = _pick(raw, "tokenizer", where)
    tok_name = None if tok_name is None else str(tok_name)
    tokenizer = _load_tokenizer(root, tok_name)
    return {
        "format": FORMAT,
        "labels": labels,
        "thresholds": resolve_thresholds(_pick(raw, "thresholds", where), labels, global_t, where),
        "global_threshold": global_t,
        "top_k": _top_k(_pick(raw, "top_k", where), where),
        "always_one": bool(_pick(raw, "always_one", where) or False),
        "max_length": _max_length(_pick(raw, "max_length", where), tokenizer, model_cfg, where),
        "activation": "sigmoid",
        "encoder": {"name": model_cfg["architectures"][0], "path": str(root),
                    "tokenizer": str(root) if _has_tokenizer(root) else tok_name},
        "source_config": raw,
    }, tokenizer


def _has_tokenizer(root: Path) -> bool:
    return any((root / f).is_file() for f in TOKENIZER_FILES)


class HFTextClassifier(TextModel):
    """A text model whose scores are the sigmoid of a sequence classifier's logits (PyTorch)."""

    backend = "torch"

    def __init__(self, path: Path, config: dict, tokenizer, model: torch.nn.Module, weights: Path):
        super().__init__(path, config)
        self.tokenizer, self.model, self.weights = tokenizer, model, weights
        self.device = next(model.parameters()).device

    def __repr__(self) -> str:
        return f"HFTextClassifier({str(self.path)!r}, {self.config['encoder']['name']}, labels={len(self.labels)})"

    @property
    def weights_path(self) -> Path:
        return self.weights

    @torch.inference_mode()
    def probabilities(self, texts: Sequence[str], *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, n_tokens, truncated = tokenize(self.tokenizer, list(texts), self.max_length)
        probs = np.zeros((len(ids), len(self.labels)), dtype=np.float64)
        for idx, batch in padded_batches(self.tokenizer, ids, batch_size, self.device):
            probs[idx] = torch.sigmoid(self.model(**batch).logits.float()).double().cpu().numpy()
        return probs, n_tokens, truncated



def load_hf_classifier(root: str | Path, *, device: str | torch.device = "cpu") -> HFTextClassifier:
    """Load a ``save_pretrained`` sequence-classification folder with seed 004's label and inference files."""
    root = Path(root)
    try:
        from transformers import AutoModelForSequenceClassification
    except ImportError as e:
        raise TextModelError(f"{root}: a Hugging Face checkpoint needs transformers (pip install 'emovox[text]'): "
                             f"{e}") from e
    try:
        model_cfg = read_hf_config(root)
        arch = architecture(model_cfg, root, suffixes=("ForSequenceClassification",))
        labels = label_names(root, model_cfg)
        weights = weights_file(root)
    except CheckpointError as e:
        raise TextModelError(str(e)) from e
    config, tokenizer = _inference_config(root, labels, model_cfg)
    try:
        with quiet_loading():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(root), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise TextModelError(f"{root}: cannot load {arch} ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from e
    if model.config.num_labels != len(labels):
        raise TextModelError(f"{root}: the model has {model.config.num_labels} outputs but {len(labels)} labels")
    model.to(device).eval()
    log.info("text model %s: %s, %d labels, sigmoid scores", root, arch, len(labels))
    return HFTextClassifier(root, config, tokenizer, model, weights)

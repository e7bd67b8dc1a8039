"""Training: label mapping, splits, the training loop, checkpoints, calibration and artifacts.

Choices, and why:

- **Inputs.** Features are read from the disk cache (:mod:`emovox.data.cache`). Frame models (cnn,
  cnn2d, crnn) train on random fixed-length crops (``crop_s``, default 3 s; shorter clips are
  padded and masked) and are evaluated on whole clips (global pooling is length-independent; the
  masks make padding invisible). Streaming models (lstm) train on whole clips (at most
  ``max_train_s``, randomly cropped beyond), padded and masked with packed sequences. Fixed-input
  configs (``num_frames``, seed 000's ``--time_steps``) crop/pad to that size everywhere.
- **Imbalance.** ``class_balance="loss"`` (default): cross-entropy weighted by ``n / (C * n_c)``;
  ``"sampler"``: classes drawn equally often; ``"none"``.
- **Label scope.** Merged corpora lack classes (CREMA-D has no surprised, nEMO no disgust); with
  ``label_scope="corpus"`` each training clip's cross-entropy runs over the labels its corpus has
  (the others' logits get -inf in the loss only), so a corpus never teaches "not X" for an X it
  cannot show (:func:`corpus_label_mask`). ``"all"`` (default): every label everywhere.
- **Optimiser and schedule.** AdamW; the learning rate warms up linearly over ``warmup_epochs``
  then decays as ``1/sqrt(step)`` ("noam", the default) or by a cosine to 1 % at ``epochs``
  ("cosine"). The noam schedule does not depend on the number of epochs, so extending a finished
  run with ``--resume --epochs N`` gives exactly a straight N-epoch run; the cosine one is
  stretched to the new horizon.
- **Model selection.** Validation UAR after every epoch; the best epoch's weights are kept
  (``best_model.pth``) and training stops after ``patience`` epochs without improvement.
- **Determinism.** ``torch.manual_seed(seed)`` at the start; each epoch's sample order and
  augmentation come from generators seeded with ``(seed, epoch)``, so a resumed run replays
  exactly what a straight run would have done. ``checkpoint.pt`` (written after every epoch, so
  after every improvement too) holds model, optimiser, schedule step, epoch, history, the best
  weights and metric, the early-stopping counter and the torch RNG state; only tensors and plain
  types, so it loads with ``torch.load(weights_only=True)``.
- **Calibration.** After training, a temperature is fitted on the validation split (LBFGS on the
  NLL) and saved in the model config; ECE before and after is reported.
- **Pretrained backbones** (``ssl``): :class:`emovox.data.backbone_data.SSLTraining` supplies the model, the
  features (backbone hidden states cached once per clip, or waveforms when fine-tuning) and the
  batch makers in place of the log-mel ones; the loop is the same (see ``docs/ssl.md``).
- **Distributed.** Under ``torchrun`` every rank builds the same global batch and trains on its
  rows; validation is sharded and gathered; rank 0 writes (:mod:`emovox.training.distributed`).
- **Reported split.** The held-out test split when there is one (``test_speakers`` or folds),
  otherwise the validation split (which also chose the epoch, so it is optimistic; the metrics
  file says which).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, training folders are not guarded
    fcntl = None
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emovox import __version__
from emovox.data.cache import AugmentConfig, BatchMaker, FeatureCache, fit_stats, load_features
from emovox.data.labels import CANONICAL_ORDER, LabelMap, order_labels
from emovox.data.splits import (
    Split,
    balanced_subset,
    speaker_folds,
    stratified_split,
    test_speaker_split,
    train_val_split,
)
from emovox.errors import TrainingError
from emovox.features import (
    PRESETS,
    FeatureConfig,
    FeatureStats,
    Normalize,
    normalize_level,
    preset,
    preset_choices,
)
from emovox.modelio import (
    FULL_MODEL_FILE,
    STREAMING_FULL_MODEL_FILE,
    STREAMING_TORCHSCRIPT_FILE,
    STREAMING_WEIGHTS_FILE,
    WEIGHTS_FILE,
    _atomic_write,
    atomic_write_all,
    make_config,
    save_model,
    torch_saver,
    write_json,
)
from emovox.models import build_model, count_parameters
from emovox.models.common import is_streaming, stream_step
from emovox.training import distributed as ddp
from emovox.training.checkpoints import CHECKPOINT_FILE, CHECKPOINT_FORMAT, Checkpoint, TrainState  # noqa: F401  (re-exported)
from emovox.training.distillation import distill_loss, soft_targets, teacher_logits_for
from emovox.training.evaluation import (
    compute_metrics,
    expected_calibration_error,
    fit_temperature,
    forward_model,
    plot_training_curves,
    predict_logits,
    softmax,
    write_report,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".emovox-train.lock"
#: Feature preset used when none is given, per model family.
DEFAULT_FEATURES = {"cnn": "logmel64", "cnn2d": "logmel64", "crnn": "logmel128", "fast": "logmel64h20", "lstm": "mfcc13-streaming",
                    "ssl": "waveform"}
#: The preset that reproduces seed 003's backend features (its per-frame librosa loop).
SEED003_BACKEND_FEATURES = "framewise-librosa-mfcc13"
#: Values of ``TrainConfig.label_scope``: each clip's loss over every label, or its corpus's labels only.
LABEL_SCOPES = ("all", "corpus")


@dataclass
class TrainConfig:
    """Every training setting; saved in the model config (``training``) and in the checkpoint."""

    model: str = "crnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    features: str | dict[str, Any] | None = None  # preset name or FeatureConfig dict; None: per family
    labels: str | None = None  # taxonomy name, 'a=b,c=d' merges, label list 'x,y,z', or None (as in the data)
    max_samples: int | None = None  # at most this many clips, spread evenly over labels and speakers; None: all
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    lr_schedule: str = "noam"  # "noam" (warmup + 1/sqrt) or "cosine" (warmup + cosine to `epochs`)
    warmup_epochs: float = 1.0
    val_split: float = 0.2
    split: str = "speaker"  # "speaker" or "stratified"
    test_speakers: list[str] | None = None
    folds: int | None = None
    fold: int | None = None  # 1-based; None: every fold
    seed: int = 0
    augment: bool = False
    augmentation: dict[str, Any] = field(default_factory=dict)  # AugmentConfig overrides
    mixup_alpha: float = 0.0  # Beta(a, a) mixup on frame models; 0: off
    class_balance: str = "loss"  # "loss", "sampler" or "none"
    label_scope: str = "all"  # "all" or "corpus": each clip's loss over its corpus's labels only
    crop_s: float | None = 3.0  # training crop for frame models; None: whole clips
    max_train_s: float = 8.0  # longest training sequence for streaming models
    # streaming models: "frames" trains the clip's label at every frame after the first
    # `frame_loss_skip_s` (an answer all along the stream, and gradients at every step), "last" only at
    # the last frame (seed 003's objective)
    streaming_loss: str = "frames"
    frame_loss_skip_s: float = 0.5
    early_stopping_patience: int | None = 5  # None or 0: off
    grad_clip: float = 5.0
    num_workers: int | None = None
    eval_batch_size: int = 32
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    # --model ssl with the 'mean' or 'stats' head (a linear probe): inverse L2 strengths tried, the best on validation
    # UAR kept; None: emovox.models.ssl.PROBE_C
    probe_c: list[float] | None = None
    # knowledge distillation (emovox.training.distillation): a teacher model and/or a file of its soft labels per clip; the loss
    # is (1 - distill_weight) * CE(true label) + distill_weight * T^2 * KL(teacher_T || student_T), T the temperature
    teacher: str | None = None
    teacher_labels: str | None = None
    distill_weight: float = 0.0
    distill_temperature: float = 2.0

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError(f"--device {self.device}: no CUDA device is available here; use --device cpu")
        return dev

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config a checkpoint or model folder saved (:meth:`to_dict`); unknown keys are refused, so a
        misspelt or retired setting is never silently dropped."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise TrainingError(f"unknown TrainConfig field(s) {', '.join(map(repr, unknown))}; "
                                f"known: {', '.join(known)}")
        return cls(**d)

    def feature_config(self) -> FeatureConfig:
        f = self.features if self.features is not None else DEFAULT_FEATURES.get(self.model, "logmel64")
        if isinstance(f, FeatureConfig):
            return f
        if isinstance(f, dict):
            return FeatureConfig.from_dict(f)
        if f not in PRESETS:
            raise TrainingError(f"unknown feature preset {f!r}; available: {preset_choices()}")
        return preset(f)

    def augment_config(self) -> AugmentConfig | None:
        return AugmentConfig.from_dict(self.augmentation) if self.augment else None

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be at least 2, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (0 < self.val_split < 1, f"val_split must be between 0 and 1, got {self.val_split}"),
            (self.split in ("speaker", "stratified"), f"split must be 'speaker' or 'stratified', got {self.split!r}"),
            (self.class_balance in ("loss", "sampler", "none"),
             f"class_balance must be loss, sampler or none, got {self.class_balance!r}"),
            (self.lr_schedule in ("noam", "cosine"), f"lr_schedule must be noam or cosine, got {self.lr_schedule!r}"),
            (self.label_scope in LABEL_SCOPES, f"label_scope must be all or corpus, got {self.label_scope!r}"),
            (self.folds is None or self.folds >= 2, f"folds must be at least 2, got {self.folds}"),
            (not (self.folds and self.test_speakers), "give either test speakers or folds, not both"),
            (self.max_samples is None or self.max_samples >= 2,
             f"max_samples must be at least 2, got {self.max_samples}"),
            (self.fold is None or (self.folds is not None and 1 <= self.fold <= self.folds),
             f"fold must be between 1 and folds ({self.folds}), got {self.fold}"),
            (self.crop_s is None or self.crop_s > 0, f"crop_s must be positive, got {self.crop_s}"),
            (self.mixup_alpha >= 0, f"mixup_alpha must not be negative, got {self.mixup_alpha}"),
            (self.streaming_loss in ("frames", "last"),
             f"streaming_loss must be frames or last, got {self.streaming_loss!r}"),
            (self.frame_loss_skip_s >= 0, f"frame_loss_skip_s must not be negative, got {self.frame_loss_skip_s}"),
            (0 <= self.distill_weight <= 1, f"distill_weight must be between 0 and 1, got {self.distill_weight}"),
            (self.distill_temperature > 0, f"distill_temperature must be positive, got {self.distill_temperature}"),
            (self.distill_weight == 0 or self.teacher or self.teacher_labels,
             "distillation (distill_weight > 0) needs a teacher: --teacher MODEL and/or --teacher-labels FILE"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TrainingError(msg)
        if self.split == "stratified" and self.test_speakers:
            raise TrainingError("test speakers need --split speaker (a stratified split ignores speakers)")


# ---------------------------------------------------------------------------------------------
# Labels and splits


def _canonical_order(labels) -> list[str]:
    labels = set(labels)
    return [lab for lab in CANONICAL_ORDER if lab in labels] + sorted(labels - set(CANONICAL_ORDER))


def _spec_orders(spec: str | None) -> bool:
    """Whether a label spec gives the model's label order (a taxonomy or a list; merges alone do not)."""
    from emovox.data.labels import parse_label_spec

    return spec is not None and str(spec).strip() != "" and parse_label_spec(spec).target is not None


def map_labels(rows: Sequence[Any], spec: str | None) -> tuple[list[Any], list[str], dict[str, int], dict[str, str | None]]:
    """Apply a label spec to manifest rows.

    Returns the kept rows (relabelled), the model's labels (those present, in the order the spec
    gives, else by :func:`emovox.data.labels.order_labels`), the clips dropped per source label and the
    mapping used.
    """
    from emovox.data.labels import LabelError

    source = _canonical_order({r.label for r in rows})
    spec = None if spec is None or str(spec).strip() == "" else spec
    try:
        lm = LabelMap.build(source, spec)
        ordered = _spec_orders(spec)
    except LabelError as e:
        raise TrainingError(f"--labels: {e}") from e
    mapping = {s: lm(s) for s in source}
    dropped = Counter(r.label for r in rows if mapping[r.label] is None)
    kept = [_relabel(r, mapping[r.label]) for r in rows if mapping[r.label] is not None]
    present = {r.label for r in kept}
    # a taxonomy or a list gives the order; otherwise the data's label set decides (a taxonomy's order
    # when it is exactly one's set, else the canonical order)
    order = [lab for lab in lm.target if lab in present] if ordered else order_labels(present)[0]
    if not kept:
        raise TrainingError(f"no clip left after mapping labels {source} to {spec!r}")
    if len(order) < 2:
        raise TrainingError(f"need at least 2 labels to train, the data has {order}")
    return kept, order, dict(dropped), mapping


def _relabel(row, label):
    if row.label == label:
        return row
    try:
        return replace(row, label=label)
    except TypeError:  # not a dataclass
        row = copy.copy(row)
        row.label = label
        return row


@dataclass
class SplitPlan:
    """Train/validation(/test) rows of one training run and how they were chosen."""

    train: list[Any]
    val: list[Any]
    test: list[Any]
    kind: str
    message: str
    val_message: str
    test_speakers: list[str] = field(default_factory=list)
    val_speakers: list[str] = field(default_factory=list)
    name: str = ""  # "fold_1", ... or ""

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "val_message": self.val_message,
                "test_speakers": self.test_speakers, "val_speakers": self.val_speakers, "sizes": self.sizes(),
                "name": self.name}


def _pick(rows, idx):
    return [rows[i] for i in idx]


def _train_val(rows, cfg: TrainConfig) -> Split:
    if cfg.split == "stratified":
        return stratified_split(rows, cfg.val_split, seed=cfg.seed)
    return train_val_split(rows, cfg.val_split, seed=cfg.seed)


def plan_splits(rows: Sequence[Any], cfg: TrainConfig) -> list[SplitPlan]:
    """The runs to make: one (train/val, or train/val/test with test speakers) or one per fold."""
    rows = list(rows)
    outer: list[tuple[str, Split | None]]
    if cfg.test_speakers:
        outer = [("", test_speaker_split(rows, cfg.test_speakers))]
    elif cfg.folds:
        src = rows if cfg.split == "speaker" else [{"label": r.label, "speaker": None} for r in rows]
        folds = speaker_folds(src, cfg.folds, seed=cfg.seed)
        outer = [(f"fold_{i + 1}", s) for i, s in enumerate(folds) if cfg.fold is None or cfg.fold == i + 1]
    else:
        outer = [("", None)]
    plans = []
    for name, s in outer:
        if s is None:
            pool, test, kind, msg, test_spk = rows, [], None, "", []
        else:
            pool, test, kind, msg, test_spk = _pick(rows, s.train), _pick(rows, s.test), s.kind, s.message, list(
                s.test_speakers)
        tv = _train_val(pool, cfg)
        if kind is None:
            kind, msg = tv.kind, tv.message
        plans.append(SplitPlan(train=_pick(pool, tv.train), val=_pick(pool, tv.val), test=test, kind=kind,
                               message=msg, val_message=tv.message, test_speakers=test_spk,
                               val_speakers=list(tv.test_speakers), name=name))
    return plans


# ---------------------------------------------------------------------------------------------
# Schedule, loss, batches


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Learning rate for optimiser step ``step`` (0-based)."""
    s = step + 1
    warm = max(1, warmup_steps)
    if s <= warm:
        return base_lr * s / warm
    if kind == "cosine":
        progress = min(1.0, (s - warm) / max(1, total_steps - warm))
        return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    return base_lr * math.sqrt(warm / s)


def class_weights(y: Sequence[int], n_classes: int) -> torch.Tensor:
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def _corpus_of(row) -> str:
    return getattr(row, "corpus", None) or "csv"  # rows without a corpus are one group with the CSV ones


def corpus_label_gaps(rows: Sequence[Any], labels: Sequence[str]) -> dict[str, list[str]]:
    """Per corpus of ``rows`` (in order of appearance), the ``labels`` that other rows have and its
    own rows do not. Labels no row has are nobody's gap."""
    seen: dict[str, set[str]] = {}
    for r in rows:
        seen.setdefault(_corpus_of(r), set()).add(r.label)
    union = set().union(*seen.values()) if seen else set()
    return {c: [lab for lab in labels if lab in union and lab not in have] for c, have in seen.items()}


def corpus_label_mask(rows: Sequence[Any], labels: Sequence[str]) -> torch.Tensor:
    """Additive loss mask ``(len(rows), len(labels))`` for ``label_scope="corpus"``: -inf where the
    row's corpus lacks the label (:func:`corpus_label_gaps`), 0 elsewhere. Added to the logits in
    the training loss only: a masked class gets no gradient from the clip, up or down. A row's own
    label is never masked, and with one corpus the mask is all zeros."""
    gaps = corpus_label_gaps(rows, labels)
    lacks = torch.tensor([[lab in gaps[_corpus_of(r)] for lab in labels] for r in rows], dtype=torch.bool)
    return torch.zeros(len(rows), len(labels)).masked_fill(lacks.view(len(rows), len(labels)), float("-inf"))


def label_scope_message(rows: Sequence[Any], labels: Sequence[str]) -> str:
    """One line on what ``label_scope="corpus"`` masks, e.g. ``crema-d lacks calm, surprised; ...``."""
    gaps = corpus_label_gaps(rows, labels)
    lacking = "; ".join(f"{c} lacks {', '.join(g)}" for c, g in sorted(gaps.items()) if g)
    if lacking:
        return f"label scope corpus: {lacking}"
    return f"label scope corpus: every corpus ({', '.join(sorted(gaps))}) has every label; the loss is unchanged"


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out.pop()  # batch norm needs at least 2 clips
    return out


def _epoch_order(n: int, y: np.ndarray, cfg: TrainConfig, epoch: int, n_classes: int) -> list[int]:
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    if cfg.class_balance == "sampler":
        w = class_weights(y, n_classes)[torch.as_tensor(y)]
        return torch.multinomial(w.double(), n, replacement=True, generator=g).tolist()
    return torch.randperm(n, generator=g).tolist()


def _frame_forward(model: nn.Module, feats: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    return stream_step(model, feats, None, every_frame=True)[0]  # logits after every frame, from no state


def _frame_objective(frame_logits: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor | None,
                     skip: int, scope: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-frame logits ``(batch, classes)`` and each clip's mean cross-entropy over its frames from
    ``skip`` on (clips shorter than that: the last frame only); padding is masked out. ``scope``
    (``(batch, classes)``, see :func:`corpus_label_mask`) is added to every frame's logits in the
    cross-entropy only, not to the returned logits."""
    b, t, _ = frame_logits.shape
    n = lengths.to(frame_logits.device).clamp(1, t) if lengths is not None else torch.full((b,), t, device=frame_logits.device)
    scoped = frame_logits if scope is None else frame_logits + scope[:, None, :]
    ce = F.cross_entropy(scoped.transpose(1, 2), target[:, None].expand(b, t), reduction="none")  # (b, t)
    pos = torch.arange(t, device=ce.device)[None, :]
    start = torch.minimum(torch.full_like(n, skip), n - 1)[:, None]
    mask = (pos >= start) & (pos < n[:, None])
    per_clip = (ce * mask).sum(1) / mask.sum(1)
    last = frame_logits.gather(1, (n - 1).view(b, 1, 1).expand(b, 1, frame_logits.shape[2])).squeeze(1)
    return last, per_clip


class FullModel(nn.Module):
    """What ``--save-full-model`` pickles to ``model_full.pth`` for frame models (cnn, cnn2d, crnn).

    ``forward(feats, lengths=None) -> logits``: raw (un-normalised) features ``(batch, n_features,
    frames)`` in, calibrated logits (divided by the fitted temperature) out; normalisation (speech
    level when the features have ``level_db``, then the training statistics) inside.
    Loading needs ``torch.load(path, weights_only=False)`` with ``emovox`` installed. A pickle can
    run arbitrary code when loaded: never load one from an untrusted source (emovox's own loader
    reads ``best_model.pth``, which holds tensors only).
    """

    def __init__(self, model: nn.Module, stats: FeatureStats | None, feature_config: FeatureConfig,
                 temperature: float, labels: Sequence[str]):
        super().__init__()
        self.model = model
        self.feature_config = feature_config
        self.normalize = Normalize(stats, feature_config.n_features)
        self.labels = list(labels)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        feats = normalize_level(feats, self.feature_config, lengths)
        return self.model(self.normalize(feats), lengths) / self.temperature


class FullStreamingModel(FullModel):
    """What ``--save-full-model`` pickles to ``model.pth`` for streaming models: seed 003's interface
    ``forward(x, hidden=None) -> (logits, hidden)`` with raw MFCC frames ``x`` of shape ``(batch,
    frames, n_mfcc)``: a single frame ``(1, 1, 13)`` continues the sequence from ``hidden``.
    Normalisation and temperature inside, so ``softmax(logits)`` is emovox's answer. With the
    ``framewise-librosa-mfcc13`` features, seed 003's backend loop runs it as written; torch >= 2.6
    loads it with ``torch.load(path, weights_only=False)`` only, and emovox must be importable
    there (the pickle names this class). Same warning as :class:`FullModel`."""

    def forward(self, x: torch.Tensor, hidden=None, lengths: torch.Tensor | None = None):
        x = self.normalize(x.transpose(1, 2)).transpose(1, 2)
        logits, hidden = self.model(x, hidden, lengths)
        return logits / self.temperature, hidden


def write_full_model(out: Path, model: nn.Module, stats: FeatureStats | None, feat_cfg: FeatureConfig,
                     temperature: float, labels: Sequence[str], say: Callable[[str], None]) -> dict[str, Any]:
    """``--save-full-model``: frame models get ``model_full.pth`` (a :class:`FullModel` pickle);
    streaming models get seed 003's files: ``model.pth`` (a :class:`FullStreamingModel` pickle),
    ``model_weights.pth`` (its state dict) and ``model_torchscript.pt`` (the same model as
    TorchScript with seed 003's ``forward(x, hidden)``: loads without emovox and without unpickling
    Python objects). Returns the ``model_meta.json`` entries that name them."""
    streaming = is_streaming(model)
    cls = FullStreamingModel if streaming else FullModel
    full = cls(copy.deepcopy(model).cpu().eval(), stats, feat_cfg, temperature, labels).eval()
    if not streaming:
        _atomic_write(out / FULL_MODEL_FILE, torch_saver(full))
        return {"full_model": FULL_MODEL_FILE, "full_model_warning": f"{FULL_MODEL_FILE} is a pickle: loading it runs "
                "code; load it only from a trusted source"}
    from emovox.export.graphs import script_seed003_step

    scripted = script_seed003_step(full, calibrated=True)
    atomic_write_all([(out / STREAMING_FULL_MODEL_FILE, torch_saver(full)),
                      (out / STREAMING_WEIGHTS_FILE, torch_saver(full.state_dict())),
                      (out / STREAMING_TORCHSCRIPT_FILE, lambda t: torch.jit.save(scripted, t))])
    if feat_cfg != preset(SEED003_BACKEND_FEATURES):
        say(f"note: {STREAMING_FULL_MODEL_FILE} takes this model's own raw features; seed 003's backend loop computes "
            f"its MFCC as the {SEED003_BACKEND_FEATURES!r} preset does: train with --features "
            f"{SEED003_BACKEND_FEATURES} for that loop to run the model unchanged")
    return {
        "full_model": STREAMING_FULL_MODEL_FILE,
        "full_model_weights": STREAMING_WEIGHTS_FILE,
        "full_model_torchscript": STREAMING_TORCHSCRIPT_FILE,
        "full_model_warning": (f"{STREAMING_FULL_MODEL_FILE} is a pickle: torch.load(path, weights_only=False) with emovox "
                               f"importable, and loading it runs code: only from a trusted source. "
                               f"{STREAMING_TORCHSCRIPT_FILE} needs neither (torch.jit.load)"),
    }


# ---------------------------------------------------------------------------------------------
# Training one model


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict[str, Any]  # metrics_overall.json
    history: list[dict[str, Any]]
    config: dict[str, Any]  # model config
    meta: dict[str, Any]  # model_meta.json
    best_epoch: int
    training_time_s: float


_held_locks: set[str] = set()  # output folders this process trains into (run_training, then train_model)


@contextlib.contextmanager
def output_lock(out: Path):
    """One training run per output folder: an exclusive ``flock`` on ``out/.emovox-train.lock``, taken by
    rank 0 only. The OS drops it when the process ends, however it ends, so a killed run can ``--resume``."""
    key = os.path.realpath(out)
    if fcntl is None or not ddp.is_rank0() or key in _held_locks:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(f"{out}: another emovox train is writing to this folder; wait for it to finish "
                                f"or choose another --output_dir") from None
        _held_locks.add(key)
        try:
            yield
        finally:
            _held_locks.discard(key)
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fit_linear_probe(hooks, sets, y, labels, cfg: TrainConfig, say) -> tuple[list[dict[str, Any]], float, int]:
    """Fit a probe head of ``--model ssl`` (``mean``/``stats``: standardised per-layer time statistics → one linear
    layer) as what it is, a
    multinomial logistic regression: scikit-learn's L-BFGS to the optimum for each inverse L2 strength C,
    class-balanced unless ``class_balance`` is "none", keeping the C with the best validation UAR.

    Returns the history (one entry per C, in the place of epochs), the best validation UAR and its entry
    number; the model holds the best fit. Labels without training clips get a -30 bias (never predicted)."""
    from sklearn.linear_model import LogisticRegression

    from emovox.models.ssl import PROBE_C

    model_head = hooks.model.head_kind
    if cfg.label_scope != "all":
        raise TrainingError(f"--label-scope corpus needs a loss trained by epochs; the {model_head!r} head is fit as a "
                            "linear probe over all labels: leave --label-scope at 'all'")
    model, n = hooks.model, len(labels)
    x = {part: model.standardise(hooks.pooled(sets[part])) for part in ("train", "val")}
    say(f"{model_head!r} head: a linear probe on {x['train'].shape[1]} pooled features, fit by L-BFGS for each C "
        f"(--epochs, --lr, --crop-seconds and --mixup do not apply)")
    history, fits = [], []
    for i, c in enumerate(cfg.probe_c or PROBE_C):
        t = time.perf_counter()
        clf = LogisticRegression(C=c, max_iter=5000, class_weight=None if cfg.class_balance == "none" else "balanced")
        clf.fit(x["train"], y["train"])
        weight, bias = np.zeros((n, x["train"].shape[1])), np.full(n, -30.0)
        coef, intercept = (clf.coef_, clf.intercept_) if len(clf.classes_) > 2 else \
            (np.concatenate([0 * clf.coef_, clf.coef_]), np.concatenate([0 * clf.intercept_, clf.intercept_]))
        weight[clf.classes_], bias[clf.classes_] = coef, intercept
        logits = {part: x[part] @ weight.T + bias for part in x}
        loss = {part: float(F.cross_entropy(torch.from_numpy(logits[part]), torch.from_numpy(y[part]))) for part in x}
        vm = compute_metrics(y["val"], logits["val"].argmax(1), labels)
        history.append({"epoch": i + 1, "C": c, "train_loss": loss["train"],
                        "train_accuracy": float(np.mean(logits["train"].argmax(1) == y["train"])),
                        "val_loss": loss["val"], "val_uar": vm["uar"], "val_accuracy": vm["accuracy"],
                        "val_macro_f1": vm["macro_f1"], "val_weighted_f1": vm["weighted_f1"], "lr": 0.0,
                        "iterations": int(np.max(clf.n_iter_)), "time_s": time.perf_counter() - t})
        fits.append((weight, bias))
        say(f"C={c:g}: loss {loss['train']:.4f}, val loss {loss['val']:.4f}, val UAR {vm['uar']:.4f}, "
            f"acc {vm['accuracy']:.4f}, macro-F1 {vm['macro_f1']:.4f}, {history[-1]['time_s']:.1f} s")
    best = max(range(len(history)), key=lambda j: history[j]["val_uar"])  # the first of equals: the stronger L2
    model.set_linear(*fits[best])
    say(f"kept C={history[best]['C']:g} (validation UAR {history[best]['val_uar']:.4f})")
    return history, history[best]["val_uar"], best + 1


def _progress_enabled(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _hash_rows(rows) -> str:
    h = hashlib.sha1()
    for r in rows:
        h.update(f"{r.path}\0{r.label}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The pieces of a run: data, model and optimizer, one epoch, calibration, artifacts


@dataclass
class TrainData:
    """A split plan's feature sets (``train``, ``val``, ``test``: None when empty) and label indices.

    Log-mel/MFCC models: features from :func:`emovox.data.cache.load_features` and ``stats`` (normalisation
    fitted on ``train``). ``--model ssl``: ``hooks`` (:class:`emovox.data.backbone_data.SSLTraining`) built the
    model and gives cached backbone states or waveforms, and its own batches; ``stats`` is None."""

    sets: dict[str, Any]
    y: dict[str, np.ndarray]
    stats: FeatureStats | None = None
    hooks: Any = None

    @property
    def is_probe(self) -> bool:
        return self.hooks is not None and self.hooks.is_probe


def load_training_data(plan: SplitPlan, labels: list[str], cfg: TrainConfig, out: Path, *, cache, progress,
                       say) -> TrainData:
    """Featurise the plan's splits for either feature kind (log-mel/MFCC, or backbone states for ssl)."""
    feat_cfg = cfg.feature_config()
    hooks = None  # families that bring their own features and batches (ssl: cached backbone states)
    if cfg.model == "ssl":
        from emovox.data.backbone_data import SSLTraining

        torch.manual_seed(cfg.seed)
        hooks = SSLTraining(cfg, n_classes=len(labels), out_dir=out, cache=cache, num_workers=cfg.num_workers,
                            progress=progress, echo=say)
    elif feat_cfg.kind == "waveform":
        raise TrainingError(f"the waveform front-end is for --model ssl; {cfg.model} needs log-mel or MFCC features")

    def load(rows, desc):
        if hooks is not None:
            return hooks.load(rows, desc=desc)
        return load_features(rows, feat_cfg, cache=cache, num_workers=cfg.num_workers, progress=progress, desc=desc)

    sets = {}
    shared_cache = hooks.uses_cache if hooks is not None else cache not in (None, False)
    for part in ("train", "val", "test"):
        rows = getattr(plan, part)
        if not rows:
            sets[part] = None
            continue
        ddp.warm_cache(lambda shard, part=part: load(shard, f"featurising {part}"), rows, enabled=shared_cache)
        sets[part] = fs = load(rows, f"featurising {part}")
        for _path, why in fs.errors:
            say(f"skipped unreadable clip: {why}")
    if sets["train"] is None or not sets["train"].features or sets["val"] is None or not sets["val"].features:
        raise TrainingError("training needs clips in both the training and the validation split")
    index = {lab: i for i, lab in enumerate(labels)}
    y = {p: np.array([index[r.label] for r in fs.rows], dtype=np.int64) for p, fs in sets.items() if fs}
    missing = [lab for i, lab in enumerate(labels) if not (y["train"] == i).any()]
    if missing:
        say(f"warning: no training clips for {', '.join(missing)}")
    stats = None if hooks is not None else fit_stats(sets["train"].features, feat_cfg)
    return TrainData(sets=sets, y=y, stats=stats, hooks=hooks)


@dataclass
class Run:
    """The model and everything that steps it: optimizer, schedule, batches, loss settings, saved config."""

    model: nn.Module
    forward: Callable  # the model's training forward (DDP-wrapped under torchrun)
    opt: torch.optim.Optimizer
    train_batches: Any  # .train_batch(items, rng) -> (features, lengths)
    eval_batches: Any  # .eval_batch(items)
    device: torch.device
    model_config: dict[str, Any]
    run_id: dict[str, Any]  # what a checkpoint must match to resume
    schedule: dict[str, Any]  # lr schedule: kind, base_lr, warmup_steps, total_steps
    eval_batch_size: int
    world_size: int = 1
    streaming: bool = False
    frame_loss: bool = False  # streaming models with the per-frame objective
    skip_frames: int = 0
    mixup: float = 0.0
    class_weights: torch.Tensor | None = None
    scope_mask: torch.Tensor | None = None  # label_scope="corpus": -inf (in the loss) on labels a clip's corpus lacks
    teacher_logits: torch.Tensor | None = None  # distillation: the teacher's logits per training clip
    distill_weight: float = 0.0
    distill_temperature: float = 2.0

    def lr(self, step: int) -> float:
        s = self.schedule
        return lr_at(step, base_lr=s["base_lr"], warmup_steps=s["warmup_steps"], total_steps=s["total_steps"],
                     kind=s["kind"])

    def schedule_at(self, step: int) -> dict[str, Any]:
        s = self.schedule
        return {"kind": s["kind"], "step": step, "base_lr": s["base_lr"], "warmup_steps": s["warmup_steps"],
                "total_steps": s["total_steps"]}

    def predict(self, features) -> np.ndarray:
        """Logits of ``features``, sharded over ranks under torchrun and gathered back in order."""
        return ddp.gather_sharded(lambda part: predict_logits(self.model, self.eval_batches, part,
                                                              batch_size=self.eval_batch_size), features)


def build_run(data: TrainData, labels: list[str], cfg: TrainConfig, say) -> Run:
    """Build (or take from the ssl hooks) the model, its batches and optimizer, and the saved model config."""
    feat_cfg, n_classes = cfg.feature_config(), len(labels)
    torch.manual_seed(cfg.seed)  # inside torch.random.fork_rng (see train_model): global state is restored
    if data.hooks is not None:
        model = data.hooks.model
        data.hooks.prepare(data.sets["train"])
    else:
        model = build_model(cfg.model, n_features=feat_cfg.n_features, n_classes=n_classes, **cfg.model_kwargs)
    device = cfg.torch_device()
    model.to(device)
    streaming = is_streaming(model)
    fps = feat_cfg.frame_rate_hz
    frame_loss = streaming and cfg.streaming_loss == "frames"  # StreamingModel.frame_logits
    if data.hooks is not None:
        train_batches, eval_batches = data.hooks.train_batches, data.hooks.eval_batches
    else:
        crop_frames = None if streaming or cfg.crop_s is None else max(1, round(cfg.crop_s * fps))
        max_frames = max(1, round(cfg.max_train_s * fps)) if streaming else None
        train_batches = BatchMaker(feat_cfg, data.stats, crop_frames=crop_frames, max_frames=max_frames,
                                   augment=cfg.augment_config())
        eval_batches = BatchMaker(feat_cfg, data.stats)
    model_config = make_config(model_name=cfg.model, model_kwargs=getattr(model, "kwargs", cfg.model_kwargs),
                               features=feat_cfg, labels=labels, stats=data.stats, temperature=1.0,
                               extra={"training": cfg.to_dict()})
    train_rows = data.sets["train"].rows
    steps_per_epoch = len(_batches(list(range(len(data.sets["train"].features))), cfg.batch_size))
    schedule = {"kind": cfg.lr_schedule, "base_lr": cfg.lr, "total_steps": steps_per_epoch * cfg.epochs,
                "warmup_steps": max(1, round(cfg.warmup_epochs * steps_per_epoch))}
    run_id = {"train": _hash_rows(train_rows), "val": _hash_rows(data.sets["val"].rows), "labels": labels,
              "model": cfg.model, "model_kwargs": model_config["model"]["kwargs"], "features": feat_cfg.to_dict(),
              "label_scope": cfg.label_scope}
    teacher_logits = None
    if cfg.distill_weight > 0:
        teacher_logits = _teacher_logits(data, labels, cfg, say)
        run_id["distill"] = {"weight": cfg.distill_weight, "temperature": cfg.distill_temperature,
                             "teacher_logits": hashlib.sha1(teacher_logits.numpy().tobytes()).hexdigest()[:16]}
        teacher_logits = teacher_logits.to(device)
    scope_mask = None
    if cfg.label_scope == "corpus":
        scope_mask = corpus_label_mask(train_rows, labels).to(device)
        say(label_scope_message(train_rows, labels))
    return Run(
        model=model, device=device, model_config=model_config, run_id=run_id, schedule=schedule,
        # DDP under torchrun; streaming models with the per-frame objective return (batch, frames, classes)
        forward=ddp.wrap_model(model, device, forward=_frame_forward if frame_loss else forward_model),
        opt=torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        train_batches=train_batches, eval_batches=eval_batches, eval_batch_size=cfg.eval_batch_size,
        world_size=ddp.world_size(), streaming=streaming, frame_loss=frame_loss,
        skip_frames=round(cfg.frame_loss_skip_s * fps),
        mixup=cfg.mixup_alpha if (cfg.mixup_alpha > 0 and not streaming) else 0.0,
        class_weights=class_weights(data.y["train"], n_classes).to(device) if cfg.class_balance == "loss" else None,
        scope_mask=scope_mask, teacher_logits=teacher_logits, distill_weight=cfg.distill_weight,
        distill_temperature=cfg.distill_temperature)


def _teacher_logits(data: TrainData, labels: list[str], cfg: TrainConfig, say) -> torch.Tensor:
    """Distillation: the teacher's logits ``(n_train, n_labels)`` for the training clips (emovox.training.distillation)."""
    if data.is_probe:
        raise TrainingError("distillation trains by epochs; the probe head of --model ssl is fit in closed form")
    logits = teacher_logits_for(data.sets["train"].rows, labels, teacher=cfg.teacher, teacher_labels=cfg.teacher_labels,
                                say=say)
    agree = float(np.mean(logits.argmax(1) == data.y["train"]))
    say(f"distillation: weight {cfg.distill_weight:g} on the teacher's soft labels at temperature "
        f"{cfg.distill_temperature:g}, {1 - cfg.distill_weight:g} on the true labels; the teacher agrees with "
        f"{100 * agree:.1f} % of the training labels")
    return torch.from_numpy(logits)


def train_step(run: Run, feats: torch.Tensor, lengths: torch.Tensor | None, target: torch.Tensor,
               scope: torch.Tensor | None, rng: np.random.Generator, *, grad_clip: float | None,
               teacher: torch.Tensor | None = None):
    """One optimizer step on a global batch (mixup, this rank's share, loss, backward, clip, step).
    ``teacher``: the batch's teacher logits (distillation). Returns the loss (the global batch's mean), this
    rank's logits and targets."""
    mixed = None
    soft = None if teacher is None else soft_targets(teacher, run.distill_temperature)
    if run.mixup:
        lam = float(rng.beta(run.mixup, run.mixup))
        perm = torch.as_tensor(rng.permutation(len(target))).to(run.device)
        feats = lam * feats + (1 - lam) * feats[perm]
        mixed = target[perm]
        if lengths is not None:
            lengths = torch.maximum(lengths, lengths[perm])
        if scope is not None:  # both clips' labels, for both terms
            scope = torch.maximum(scope, scope[perm])
        if soft is not None:
            soft = lam * soft + (1 - lam) * soft[perm]
    # the global batch is built alike on every rank; each keeps its rows (no-op in one process)
    global_target, global_mixed = target, mixed
    feats, lengths, target, mixed, scope, soft = ddp.shard_batch(feats, lengths, target, mixed, scope, soft)
    logits = run.forward(feats, lengths)
    if run.frame_loss:
        logits, per_clip = _frame_objective(logits, target, lengths, run.skip_frames, scope)
        loss = ddp.global_mean_loss(per_clip, target, global_target, weight=run.class_weights)
    else:
        scoped = logits if scope is None else logits + scope  # the loss only; accuracy reads logits
        loss = ddp.global_mean_cross_entropy(scoped, target, global_target, weight=run.class_weights)
        if run.mixup:  # frame models only (mixup is off for streaming ones)
            loss = lam * loss + (1 - lam) * ddp.global_mean_cross_entropy(scoped, mixed, global_mixed,
                                                                          weight=run.class_weights)
    if soft is not None:  # distillation: the teacher's softened distribution, over every label
        kd = ddp.global_mean_loss(distill_loss(logits, None, run.distill_temperature, soft), target, global_target)
        loss = (1 - run.distill_weight) * loss + run.distill_weight * kd
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
    run.opt.step()
    return loss, logits, target


def train_epoch(run: Run, data: TrainData, cfg: TrainConfig, epoch: int, state: TrainState, *,
                progress: bool | None) -> dict[str, float]:
    """One pass over the training set (``state.step`` advances); the epoch's training loss, accuracy and last lr."""
    from tqdm.auto import tqdm

    run.model.train()
    n_train, n_classes = len(data.sets["train"].features), len(run.model_config["labels"])
    order = _epoch_order(n_train, data.y["train"], cfg, epoch, n_classes)
    batches = [b for b in _batches(order, cfg.batch_size) if len(b) >= run.world_size]  # every rank needs a clip
    rng = np.random.default_rng([cfg.seed, epoch])
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, dynamic_ncols=True,
               disable=not _progress_enabled(progress))
    loss_sum, n_seen, correct, lr = 0.0, 0, 0, run.lr(state.step)
    for idx in bar:
        lr = run.lr(state.step)
        for g in run.opt.param_groups:
            g["lr"] = lr
        feats, lengths = run.train_batches.train_batch([data.sets["train"].features[i] for i in idx], rng)
        loss, logits, target = train_step(
            run, feats.to(run.device, non_blocking=True), lengths.to(run.device) if lengths is not None else None,
            torch.as_tensor(data.y["train"][idx]).to(run.device),
            run.scope_mask[idx] if run.scope_mask is not None else None, rng, grad_clip=cfg.grad_clip,
            teacher=run.teacher_logits[idx] if run.teacher_logits is not None else None)
        state.step += 1
        loss_sum += loss.item() * len(idx) / run.world_size  # summed over ranks: the global batch's mean x its size
        n_seen += len(idx)
        correct += int((logits.argmax(1) == target).sum())
        bar.set_postfix(loss=f"{loss_sum / n_seen:.3f}", acc=f"{correct / n_seen:.3f}")
    bar.close()
    if run.world_size > 1:
        loss_sum, correct = ddp.all_reduce_sum([loss_sum, correct])
        correct = round(correct)
    return {"train_loss": loss_sum / max(1, n_seen), "train_accuracy": correct / max(1, n_seen), "lr": lr}


def validate(run: Run, data: TrainData, labels: list[str]) -> dict[str, float]:
    val_logits = run.predict(data.sets["val"].features)
    vm = compute_metrics(data.y["val"], val_logits.argmax(1), labels)
    val_loss = float(F.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(data.y["val"])))
    return {"val_loss": val_loss, "val_uar": vm["uar"], "val_accuracy": vm["accuracy"],
            "val_macro_f1": vm["macro_f1"], "val_weighted_f1": vm["weighted_f1"]}


def calibrate_and_report(run: Run, data: TrainData, plan: SplitPlan, labels: list[str], state: TrainState,
                         training_time_s: float) -> dict[str, Any]:
    """Load the best weights, fit the temperature on validation, and measure the test split (or
    validation when there is none); the model ends on the CPU, in eval mode, its config calibrated."""
    run.model.load_state_dict(state.best_state)
    run.model.cpu().eval()  # calibration, reports and saved artifacts on the CPU
    sets, y = data.sets, data.y
    val_logits = run.predict(sets["val"].features)
    temperature = fit_temperature(val_logits, y["val"])
    part = "test" if sets["test"] is not None and sets["test"].features else "val"
    logits = val_logits if part == "val" else run.predict(sets["test"].features)
    metrics = compute_metrics(y[part], logits.argmax(1), labels)
    metrics.update({
        "split": part,
        "split_kind": plan.kind,
        "split_message": plan.message,
        "sizes": {p: (len(fs.features) if fs else 0) for p, fs in sets.items()},
        "ece": expected_calibration_error(softmax(logits), y[part]),
        "ece_calibrated": expected_calibration_error(softmax(logits, temperature), y[part]),
        "temperature": temperature,
        "best_epoch": state.best_epoch,
        "best_val_uar": state.best_uar,
        "epochs_run": len(state.history),
        "training_time_s": training_time_s,
    })
    run.model_config["temperature"] = temperature
    return metrics


def write_artifacts(out: Path, run: Run, data: TrainData, cfg: TrainConfig, plan: SplitPlan, metrics: dict[str, Any],
                    history: list[dict[str, Any]], *, meta: dict[str, Any] | None, save_full_model: bool, plots: bool,
                    started_at: float, say) -> dict[str, Any]:
    """The model folder: weights and config, report, history, curves, full models; returns model_meta.json."""
    model, model_config, feat_cfg = run.model, run.model_config, cfg.feature_config()
    labels, temperature = model_config["labels"], model_config["temperature"]
    save_model(out, model, model_config)
    write_report(out, metrics, title=f"{cfg.model} ({metrics['split']}, {plan.kind})", plots=plots)
    write_json(out / "training_history.json", history)
    if plots:
        plot_training_curves(history, out / "training_curves.png")
    full_files = write_full_model(out, model, data.stats, feat_cfg, temperature, labels, say) if save_full_model else {}
    model_meta = {
        "model": cfg.model,
        "labels": labels,
        "features": feat_cfg.to_dict(),
        **(meta or {}),
        "split": plan.to_dict(),
        "seed": cfg.seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "emovox_version": __version__,
        "parameters": count_parameters(model),
        "size_bytes": (out / WEIGHTS_FILE).stat().st_size,
        "training_time_s": round(metrics["training_time_s"], 2),
        "wall_time_s": round(time.perf_counter() - started_at, 2),
        "epochs_run": len(history),
        "best_epoch": metrics["best_epoch"],
        "temperature": temperature,
        "train_config": cfg.to_dict(),
        **full_files,
    }
    write_json(out / "model_meta.json", model_meta)
    return model_meta


def _open_output(out_dir, *, is_main: bool) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_main:  # under the folder's lock: temporary files of a run that was killed mid-write
        for stale in out.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    return out


def train_model(plan: SplitPlan, labels: Sequence[str], cfg: TrainConfig, out_dir: str | os.PathLike, *,
                cache: FeatureCache | str | os.PathLike | bool | None = None, resume: bool = False,
                save_full_model: bool = False, meta: dict[str, Any] | None = None,
                progress: bool | None = None, echo: Callable[[str], None] | None = None,
                plots: bool = True) -> TrainResult:
    """Train one model on ``plan`` and write every artifact to ``out_dir`` (PNGs only with ``plots``).

    ``labels`` are the model's labels (every row's label must be one of them). ``resume``
    continues from ``out_dir/checkpoint.pt`` when it exists. ``echo`` receives one line per
    epoch and the summary (the CLI passes ``print``). The global torch RNG is seeded inside
    ``torch.random.fork_rng``, so the caller's RNG state is left as it was.
    """
    cfg.validate()
    with output_lock(Path(out_dir)), torch.random.fork_rng(devices=[]):
        return _train_model(plan, list(labels), cfg, out_dir, cache=cache, resume=resume,
                            save_full_model=save_full_model, meta=meta, progress=progress, echo=echo, plots=plots)


def _train_model(plan, labels, cfg: TrainConfig, out_dir, *, cache, resume, save_full_model, meta, progress,
                 echo, plots) -> TrainResult:
    say = echo or log.info
    # under torchrun (emovox.training.distributed): every rank trains its share of each batch, rank 0 writes and talks
    is_main = ddp.is_rank0()
    if not is_main:
        say, progress = log.debug, False
    t_start = time.perf_counter()
    out = _open_output(out_dir, is_main=is_main)
    data = load_training_data(plan, labels, cfg, out, cache=cache, progress=progress, say=say)
    run = build_run(data, labels, cfg, say)
    checkpoint = Checkpoint(out / CHECKPOINT_FILE, run.run_id)
    state = TrainState.fresh(run.model)
    if resume and checkpoint.exists():
        state = checkpoint.restore(run.model, run.opt)
        say(f"resuming from {checkpoint.path} after epoch {state.epoch} (best validation UAR {state.best_uar:.4f} "
            f"at epoch {state.best_epoch})")
    elif resume:
        say(f"--resume: no checkpoint in {out}, starting from scratch")

    patience = cfg.early_stopping_patience or 0
    t_loop = time.perf_counter()
    if data.is_probe:  # fit in closed form instead of the epochs below
        state.history, state.best_uar, state.best_epoch = _fit_linear_probe(data.hooks, data.sets, data.y, labels,
                                                                            cfg, say)
        state.best_state = copy.deepcopy(run.model.state_dict())
    for epoch in range(state.epoch, 0 if data.is_probe else cfg.epochs):
        if state.stopped(patience):
            break
        t_epoch = time.perf_counter()
        trained = train_epoch(run, data, cfg, epoch, state, progress=progress)
        lr = trained.pop("lr")
        entry = {"epoch": epoch + 1, **trained, **validate(run, data, labels), "lr": lr,
                 "time_s": time.perf_counter() - t_epoch}
        improved = state.record(entry, run.model)
        if improved and is_main:
            save_model(out, run.model, run.model_config)
        if is_main:
            elapsed = state.elapsed_before_s + time.perf_counter() - t_loop
            checkpoint.save(state, model=run.model, opt=run.opt, seed=cfg.seed, schedule=run.schedule_at(state.step),
                            train_config=cfg.to_dict(), training_time_s=elapsed)
        say(f"epoch {epoch + 1}/{cfg.epochs}: loss {entry['train_loss']:.4f}, val loss {entry['val_loss']:.4f}, "
            f"val UAR {entry['val_uar']:.4f}, acc {entry['val_accuracy']:.4f}, macro-F1 {entry['val_macro_f1']:.4f}, "
            f"lr {entry['lr']:.2e}, {entry['time_s']:.1f} s" + (" *" if improved else ""))
        if state.stopped(patience):
            say(f"early stopping: no validation UAR improvement for {patience} epochs")
    training_time = state.elapsed_before_s + time.perf_counter() - t_loop

    metrics = calibrate_and_report(run, data, plan, labels, state, training_time)
    result = TrainResult(out_dir=out, metrics=metrics, history=state.history, config=run.model_config, meta={},
                         best_epoch=state.best_epoch, training_time_s=training_time)
    if not is_main:  # other ranks are done: rank 0 writes the model and its artifacts
        return result
    result.meta = write_artifacts(out, run, data, cfg, plan, metrics, state.history, meta=meta,
                                  save_full_model=save_full_model, plots=plots,
                                  started_at=t_start, say=say)
    y = data.y[metrics["split"]]
    say(f"{metrics['split']} ({len(y)} clips): UAR {metrics['uar']:.4f}, accuracy {metrics['accuracy']:.4f}, "
        f"macro-F1 {metrics['macro_f1']:.4f}, ECE {metrics['ece']:.4f} -> {metrics['ece_calibrated']:.4f} "
        f"(T={metrics['temperature']:.3f}); best epoch {state.best_epoch}; model in {out}")
    return result


def run_training(rows: Sequence[Any], cfg: TrainConfig, out_dir: str | os.PathLike, *,
                 cache: FeatureCache | str | os.PathLike | bool | None = None, resume: bool = False,
                 save_full_model: bool = False, meta: dict[str, Any] | None = None, progress: bool | None = None,
                 echo: Callable[[str], None] | None = None, plots: bool = True) -> list[TrainResult]:
    """Map labels, plan the split(s) and train: one model in ``out_dir``, or one per fold in
    ``out_dir/fold_K`` plus ``cv_summary.json`` (mean and standard deviation over folds)."""
    cfg.validate()
    say = echo or log.info
    kept, labels, dropped, mapping = map_labels(rows, cfg.labels)
    if dropped:
        say(f"left out {sum(dropped.values())} clip(s) whose label the target labels cannot express: "
            + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())))
    if cfg.max_samples is not None and len(kept) > cfg.max_samples:
        say(f"--max-samples {cfg.max_samples}: kept {cfg.max_samples} of {len(kept)} clips, spread evenly over "
            "labels and, within each label, over speakers")
        kept = [kept[i] for i in balanced_subset(kept, cfg.max_samples, seed=cfg.seed)]
    order_rule = "the order --labels gives" if _spec_orders(cfg.labels) else order_labels(labels)[1]
    say(f"{len(kept)} clips, labels (output order, written to labels.json): {', '.join(labels)}; {order_rule}")
    plans = plan_splits(kept, cfg)
    meta = {**(meta or {}), "label_mapping": mapping, "dropped_labels": dropped, "label_order": order_rule,
            "corpora": sorted({getattr(r, "corpus", "?") for r in kept})}
    results = []
    with output_lock(Path(out_dir)):
        for plan in plans:
            say(plan.message if plan.message == plan.val_message else
                f"{plan.message}; validation: {plan.val_message}")
            target = Path(out_dir) / plan.name if plan.name else Path(out_dir)
            results.append(train_model(plan, labels, cfg, target, cache=cache, resume=resume,
                                       save_full_model=save_full_model, meta=meta, progress=progress, echo=echo,
                                       plots=plots))
    if len(results) > 1:
        summary = cv_summary(results)
        if ddp.is_rank0():
            write_json(Path(out_dir) / "cv_summary.json", summary)
        say("cross-validation: " + ", ".join(
            f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary["metrics"].items()))
    return results


def cv_summary(results: Sequence[TrainResult]) -> dict[str, Any]:
    keys = ("uar", "accuracy", "macro_f1", "weighted_f1", "ece", "ece_calibrated")
    out = {k: [float(r.metrics[k]) for r in results] for k in keys}
    return {
        "folds": [str(r.out_dir) for r in results],
        "metrics": {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v} for k, v in out.items()},
        "training_time_s": float(sum(r.training_time_s for r in results)),
    }

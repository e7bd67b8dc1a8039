"""Training settings: :class:`TrainConfig` (every ``emovox train`` default is a field here) and the per-family feature defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from emovox.data.cache import AugmentConfig
from emovox.errors import TrainingError
from emovox.features import (
    PRESETS,
    FeatureConfig,
    preset,
    preset_choices,
)

#: Feature preset used when none is given, per model family.
DEFAULT_FEATURES = {"cnn": "logmel64", "cnn2d": "logmel64", "crnn": "logmel128", "fast": "logmel64h20", "lstm": "mfcc13-streaming",
                    "ssl": "waveform"}
#: The preset that reproduces the streaming MFCC-LSTM's backend features (its per-frame librosa loop).
LSTM_LOOP_FEATURES = "framewise-librosa-mfcc13"
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
    # multi-condition training (emovox.training.multicondition): a degradation spec (emovox.degrade.parse_spec: a
    # preset, a chain, a YAML/JSON file), degraded copies per training clip (None: the spec's `copies`, else 1) and
    # a folder of noise recordings for its 'noise' steps
    augment_spec: str | None = None
    augment_copies: int | None = None
    noise_dir: str | None = None
    mixup_alpha: float = 0.0  # Beta(a, a) mixup on frame models; 0: off
    class_balance: str = "loss"  # "loss", "sampler" or "none"
    label_scope: str = "all"  # "all" or "corpus": each clip's loss over its corpus's labels only
    crop_s: float | None = 3.0  # training crop for frame models; None: whole clips
    max_train_s: float = 8.0  # longest training sequence for streaming models
    # streaming models: "frames" trains the clip's label at every frame after the first
    # `frame_loss_skip_s` (an answer all along the stream, and gradients at every step), "last" only at
    # the last frame (the streaming MFCC-LSTM's objective)
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
        if self.augment_spec is not None or self.augment_copies is not None or self.noise_dir is not None:
            from emovox.training.multicondition import check_augment

            check_augment(self.augment_spec, self.augment_copies, self.noise_dir)
        if self.split == "stratified" and self.test_speakers:
            raise TrainingError("test speakers need --split speaker (a stratified split ignores speakers)")

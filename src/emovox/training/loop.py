"""The training loop: training data, the run (model, batches, optimiser, schedule), one step, one epoch, validation."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emovox.data.cache import BatchMaker, fit_stats, load_features, progress_enabled
from emovox.errors import TrainingError
from emovox.features import (
    FeatureStats,
)
from emovox.modelio import (
    make_config,
)
from emovox.models import build_model
from emovox.models.common import is_streaming, stream_step
from emovox.training import distributed as ddp
from emovox.training.checkpoints import TrainState
from emovox.training.config import TrainConfig
from emovox.training.distillation import distill_loss, soft_targets, teacher_logits_for
from emovox.training.evaluation import (
    compute_metrics,
    forward_model,
    predict_logits,
)
from emovox.training.plan import SplitPlan, corpus_label_mask, label_scope_message


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


def _hash_rows(rows) -> str:
    h = hashlib.sha1()
    for r in rows:
        h.update(f"{r.path}\0{r.label}\n".encode())
    return h.hexdigest()[:16]



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
    multi: Any = None  # --augment: the degraded copies (emovox.training.multicondition.MultiCondition)

    @property
    def is_probe(self) -> bool:
        return self.hooks is not None and self.hooks.is_probe

    def train_items(self, idx: Sequence[int], epoch: int) -> list[Any]:
        """The training items of clips ``idx`` in ``epoch``: the clean clips, or (``--augment``) each clip's
        version drawn for the epoch."""
        fs = self.sets["train"]
        if self.multi is None:
            return [fs.features[i] for i in idx]
        return self.multi.items(fs, idx, epoch)


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
    multi = None
    if cfg.augment_spec is not None:
        from emovox.training.multicondition import prepare_multicondition

        multi = prepare_multicondition(cfg, sets["train"], hooks=hooks, feat_cfg=feat_cfg, cache=cache,
                                       progress=progress, say=say)
    stats = None
    if hooks is None:  # standardisation from what training sees: the clean clips and their degraded copies
        mix = [f for copy in (multi.features if multi is not None else []) for f in copy]
        stats = fit_stats(list(sets["train"].features) + mix, feat_cfg)
    return TrainData(sets=sets, y=y, stats=stats, hooks=hooks, multi=multi)


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
    teacher_logits: torch.Tensor | None = None  # distillation: (1 + copies, n_train, classes) teacher logits
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
    if data.multi is not None:  # a checkpoint resumes only with the same degraded copies
        run_id["augment"] = {"key": data.multi.degrader.key(), "copies": data.multi.copies, "pool": data.multi.pool}
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
    """Distillation: the teacher's logits ``(1 + K, n_train, n_labels)`` for the training clips (index 0) and,
    with ``--augment`` on a cached family, for each of their K degraded copies (emovox.training.distillation)."""
    if data.is_probe:
        raise TrainingError("distillation trains by epochs; the probe head of --model ssl is fit in closed form")
    multi = data.multi
    copies = [multi.copy(c) for c in range(multi.copies)] if multi is not None and multi.features is not None else []
    logits = teacher_logits_for(data.sets["train"].rows, labels, teacher=cfg.teacher, teacher_labels=cfg.teacher_labels,
                                copies=copies, say=say)
    agree = float(np.mean(logits.argmax(-1) == data.y["train"][None]))
    if multi is not None and not copies:  # fine-tuning degrades each step afresh: no copy to label beforehand
        say("distillation: the degraded versions get their clean clip's soft label (copies are made per step)")
    say(f"distillation: weight {cfg.distill_weight:g} on the teacher's soft labels at temperature "
        f"{cfg.distill_temperature:g}, {1 - cfg.distill_weight:g} on the true labels"
        + (f"; the teacher's logits on the clean clips and on each of their {len(copies)} degraded copies" if copies
           else "") + f"; the teacher agrees with {100 * agree:.1f} % of the training labels")
    return torch.from_numpy(logits)


def _batch_teacher(run: Run, data: TrainData, idx: list[int], epoch: int) -> torch.Tensor | None:
    """The teacher logits of a batch: each clip's, for the version (clean or copy k) the epoch draws of it."""
    if run.teacher_logits is None:
        return None
    if run.teacher_logits.shape[0] == 1:
        return run.teacher_logits[0, idx]
    version = torch.as_tensor(data.multi.choice(epoch, len(data.sets["train"].features))[idx])
    return run.teacher_logits[version, torch.as_tensor(idx)]


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
               disable=not progress_enabled(progress))
    loss_sum, n_seen, correct, lr = 0.0, 0, 0, run.lr(state.step)
    for idx in bar:
        lr = run.lr(state.step)
        for g in run.opt.param_groups:
            g["lr"] = lr
        feats, lengths = run.train_batches.train_batch(data.train_items(idx, epoch), rng)
        loss, logits, target = train_step(
            run, feats.to(run.device, non_blocking=True), lengths.to(run.device) if lengths is not None else None,
            torch.as_tensor(data.y["train"][idx]).to(run.device),
            run.scope_mask[idx] if run.scope_mask is not None else None, rng, grad_clip=cfg.grad_clip,
            teacher=_batch_teacher(run, data, idx, epoch))
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

"""One training run (:func:`train_model`) and the runs around it (:func:`run_training`: labels, splits or folds, one run per plan, a cross-validation summary).

Choices, and why:

- **Inputs.** Features are read from the disk cache (:mod:`emovox.data.cache`). Frame models (cnn,
  cnn2d, crnn) train on random fixed-length crops (``crop_s``, default 3 s; shorter clips are
  padded and masked) and are evaluated on whole clips (global pooling is length-independent; the
  masks make padding invisible). Streaming models (lstm) train on whole clips (at most
  ``max_train_s``, randomly cropped beyond), padded and masked with packed sequences. Fixed-input
  configs (``num_frames``, the Core ML mobile CNN's ``--time_steps``) crop/pad to that size everywhere.
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
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, training folders are not guarded
    fcntl = None
import numpy as np
import torch

from emovox.atomic import write_json
from emovox.data.cache import FeatureCache
from emovox.data.labels import order_labels
from emovox.data.splits import (
    balanced_subset,
)
from emovox.errors import TrainingError
from emovox.modelio import (
    save_model,
)
from emovox.training import distributed as ddp
from emovox.training.artifacts import calibrate_and_report, write_artifacts
from emovox.training.checkpoints import CHECKPOINT_FILE, Checkpoint, TrainState
from emovox.training.config import TrainConfig
from emovox.training.loop import build_run, load_training_data, train_epoch, validate
from emovox.training.plan import SplitPlan, map_labels, plan_splits, spec_orders
from emovox.training.probe import fit_linear_probe

log = logging.getLogger(__name__)
LOCK_FILE = ".emovox-train.lock"



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
    rank 0 only. The OS drops it when the process ends, however it ends, so a killed run can ``--resume``.
    When the run ends the lock file goes, and so does the folder when the run created it and left it empty
    (a run that failed before writing anything)."""
    key = os.path.realpath(out)
    if fcntl is None or not ddp.is_rank0() or key in _held_locks:
        yield
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not lock.exists() or os.stat(lock).st_ino != os.fstat(fh.fileno()).st_ino:
                raise BlockingIOError  # a run that just ended removed this file: another one has the folder now
        except BlockingIOError:
            raise TrainingError(f"{out}: another emovox train is writing to this folder; wait for it to finish "
                                f"or choose another --output_dir") from None
        _held_locks.add(key)
        try:
            yield
        finally:
            _held_locks.discard(key)
            lock.unlink(missing_ok=True)  # while still held: a waiting run's check above sees it gone
            fcntl.flock(fh, fcntl.LOCK_UN)
            if created and not any(out.iterdir()):
                out.rmdir()


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
        state.history, state.best_uar, state.best_epoch = fit_linear_probe(data.hooks, data.sets, data.y, labels,
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
    order_rule = "the order --labels gives" if spec_orders(cfg.labels) else order_labels(labels)[1]
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

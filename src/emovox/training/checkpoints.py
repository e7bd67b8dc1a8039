"""Training checkpoints: ``checkpoint.pt`` holds enough to continue a run exactly where it stopped.

A checkpoint is a plain dict of tensors and values (``torch.load(..., weights_only=True)``):
``format``, ``version``, ``emovox_version``, ``epoch`` (epochs done), ``step`` (optimizer steps done),
``model_state``, ``optimizer_state``, ``schedule``, ``best`` (validation UAR, its epoch, the epochs
since, its weights), ``history``, ``rng`` (the torch RNG), ``numpy_seed``, ``train_config``, ``data``
(the run's identity: what must be equal to resume) and ``training_time_s``. It is written atomically
after every epoch by the process that writes (rank 0 under torchrun).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emovox import __version__
from emovox.atomic import write_file
from emovox.errors import TrainingError
from emovox.features import FeatureConfig
from emovox.modelio import torch_saver

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "emovox-checkpoint"


@dataclass
class TrainState:
    """Where a run stands: what the loop carries from epoch to epoch, and what a checkpoint restores."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    history: list[dict[str, Any]] = field(default_factory=list)
    best_uar: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one
    best_state: dict[str, Any] | None = None  # the best epoch's weights
    elapsed_before_s: float = 0.0  # training time spent before this process (a resumed run)

    @classmethod
    def fresh(cls, model: nn.Module) -> TrainState:
        return cls(best_state=copy.deepcopy(model.state_dict()))

    def stopped(self, patience: int | None) -> bool:
        """Early stopping: ``patience`` epochs without a better validation UAR."""
        return bool(patience and self.bad_epochs >= patience)

    def record(self, entry: dict[str, Any], model: nn.Module) -> bool:
        """Add an epoch's history entry; keep the weights when validation UAR improved (True then)."""
        self.history.append(entry)
        self.epoch = int(entry["epoch"])
        improved = entry["val_uar"] > self.best_uar + 1e-9
        if improved:
            self.best_uar, self.best_epoch, self.bad_epochs = entry["val_uar"], self.epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
        return improved


def comparable(run_id: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's run identity with its feature config read through :class:`FeatureConfig`, so
    that fields added to it since (at their defaults) do not make an old checkpoint look foreign;
    checkpoints from before ``label_scope`` were trained with ``"all"``."""
    out = {"label_scope": "all", **run_id}
    if isinstance(out.get("features"), dict):
        try:
            out["features"] = FeatureConfig.from_dict(out["features"]).to_dict()
        except (TypeError, ValueError):
            pass  # unreadable: compares unequal, and the caller says so
    return out


class Checkpoint:
    """``path`` (``OUT/checkpoint.pt``) of the run identified by ``run_id`` (data, labels, model, features)."""

    def __init__(self, path: str | Path, run_id: dict[str, Any]):
        self.path = Path(path)
        self.run_id = run_id

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> dict[str, Any]:
        try:
            ck = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - corrupt or foreign files raise many types
            raise TrainingError(f"{self.path}: cannot read checkpoint: {str(e).splitlines()[0][:200]}") from e
        if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{self.path}: not an emovox training checkpoint")
        return ck

    def check_compatible(self, saved_id: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint of another run, saying what differs."""
        saved = comparable(saved_id)
        if saved == self.run_id:
            return
        if saved["label_scope"] != self.run_id["label_scope"]:
            raise TrainingError(f"{self.path}: the checkpoint was trained with label scope {saved['label_scope']!r}, "
                                f"this run asks for {self.run_id['label_scope']!r}; train into a new --output_dir, "
                                "drop --resume or keep the label scope")
        raise TrainingError(f"{self.path}: the checkpoint was made with other data, labels, model or features; "
                            "train into a new --output_dir or drop --resume")

    def restore(self, model: nn.Module, opt: torch.optim.Optimizer) -> TrainState:
        """Load the checkpoint into ``model`` and ``opt``, set the torch RNG, and return where the run stood."""
        ck = self.read()
        self.check_compatible(ck["data"])
        try:
            model.load_state_dict(ck["model_state"])
            opt.load_state_dict(ck["optimizer_state"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainingError(f"{self.path}: does not fit this model: {str(e).splitlines()[0]}") from e
        best = ck["best"]
        state = TrainState(epoch=int(ck["epoch"]), step=int(ck["step"]), history=list(ck["history"]),
                           best_uar=float(best["metric"]), best_epoch=int(best["epoch"]),
                           bad_epochs=int(best["bad_epochs"]), best_state=best["state_dict"],
                           elapsed_before_s=float(ck.get("training_time_s", 0.0)))
        torch.set_rng_state(ck["rng"]["torch"])
        return state

    def save(self, state: TrainState, *, model: nn.Module, opt: torch.optim.Optimizer, seed: int,
             schedule: dict[str, Any], train_config: dict[str, Any], training_time_s: float) -> None:
        ck = {
            "format": CHECKPOINT_FORMAT, "version": 1, "emovox_version": __version__,
            "epoch": state.epoch, "step": state.step, "model_state": model.state_dict(),
            "optimizer_state": opt.state_dict(),
            "schedule": schedule,
            "best": {"metric": state.best_uar, "epoch": state.best_epoch, "bad_epochs": state.bad_epochs,
                     "state_dict": state.best_state},
            "history": state.history, "rng": {"torch": torch.get_rng_state()}, "numpy_seed": [seed, state.epoch],
            "train_config": train_config, "data": self.run_id,
            "training_time_s": training_time_s,
        }
        write_file(self.path, torch_saver(ck))

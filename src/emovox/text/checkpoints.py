"""Resumable text fine-tuning: the state of a ``finetune`` run, saved in its output folder.

Fine-tuning a large encoder's top layers on CPU takes hours (``all-mpnet-base-v2``: tens of minutes an epoch
on two cores), so :func:`emovox.text.train.train_text_model` saves the run every ``checkpoint_steps``
optimiser steps and at the end of each epoch: the trained layers, the head, the optimiser and schedule,
the data order's generator as the epoch began, the random state, the best epoch so far and the history.
``emovox text-train --resume`` (``resume=True``) continues from it: the same batches in the same order from
the step after the checkpoint, so a resumed run ends where a straight one would.

The file is written atomically (:mod:`emovox.atomic`: a kill leaves the previous checkpoint) and read with
``torch.load(weights_only=True)`` (tensors, numbers and strings only: no pickled objects). A checkpoint of
another run (other data, encoder or settings) is refused with what differs; it is removed once the model
folder is written.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from emovox.atomic import write_file

CHECKPOINT_FILE = "finetune_checkpoint.pt"
#: Settings that do not change what is trained (a resumed run may change them).
NOT_IDENTITY = ("checkpoint_steps", "embed_batch_size")


class TextCheckpointError(ValueError):
    """A checkpoint that belongs to another run or cannot be read."""


def run_identity(cfg, encoder_ref: str, train_sha256: str, dev_sha256: str) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the data, the encoder and every training setting."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in NOT_IDENTITY}
    return {"encoder": encoder_ref, "train_sha256": train_sha256, "dev_sha256": dev_sha256, "config": settings}


def save_checkpoint(out_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    path = Path(out_dir) / CHECKPOINT_FILE
    write_file(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(out_dir: str | os.PathLike, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The run's checkpoint in ``out_dir`` (None when there is none); refuses another run's."""
    path = Path(out_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged or foreign file
        said = (str(e).strip().splitlines() or [type(e).__name__])[0]  # torch's first line; the rest is advice
        raise TextCheckpointError(f"{path}: not a readable text fine-tuning checkpoint ({said}); delete it to start "
                                  "over") from e
    if not isinstance(state, dict) or "identity" not in state:
        raise TextCheckpointError(f"{path}: not a text fine-tuning checkpoint; delete it to start over")
    if state["identity"] != identity:
        raise TextCheckpointError(f"{path}: written by another run ({_differences(state['identity'], identity)}); "
                                  "resume with the same data and settings, or use another --output-dir")
    return state


def remove_checkpoint(out_dir: str | os.PathLike) -> None:
    (Path(out_dir) / CHECKPOINT_FILE).unlink(missing_ok=True)


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> str:
    flat_saved = {**{k: v for k, v in saved.items() if k != "config"}, **saved.get("config", {})}
    flat_now = {**{k: v for k, v in now.items() if k != "config"}, **now.get("config", {})}
    keys = sorted(k for k in set(flat_saved) | set(flat_now) if flat_saved.get(k) != flat_now.get(k))
    return ", ".join(f"{k}: {flat_saved.get(k)!r} then, {flat_now.get(k)!r} now" for k in keys[:4])

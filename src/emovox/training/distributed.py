"""Data-parallel training across processes (``torchrun``) with PyTorch DistributedDataParallel.

``emovox train`` runs unchanged under ``torchrun --nproc_per_node N -m emovox.cli train ...``:
the command calls :func:`init_from_env` (a no-op without torchrun's ``WORLD_SIZE > 1``), and the
trainer asks this module who it is. Every helper is a no-op in a single process, so the trainer
has one code path.

How the trainer splits the work, and why
    Every rank draws the same epoch order from ``(seed, epoch)`` and builds the same *global*
    batch of ``--batch_size`` clips (crops, augmentation and mixup drawn exactly as in one
    process), then keeps its share, rows ``rank::world_size`` (:func:`shard_batch`). The loss of
    each share is scaled so that DDP's gradient average equals the gradient of the global batch's
    (class-weighted) mean loss (:func:`global_mean_cross_entropy`). Validation and test clips are
    sharded ``rank::world_size`` and the logits gathered back in order
    (:func:`gather_sharded`), so metrics, early stopping and calibration are identical on every
    rank. Only rank 0 writes files. Feature caches are filled by each rank for its shard of
    clips, then read by all.

    :func:`shard_sampler` (a :class:`~torch.utils.data.DistributedSampler` seeded with the run's
    seed) is there for DataLoader-based code such as the benchmark; the trainer does not use it
    because it already draws a seeded order per epoch (also for its class-balanced sampler), and
    sharding each global batch instead of the epoch keeps the global batch — hence the result —
    the same as in one process.

What equals a single-process run, and what does not
    With the same seed and global batch size, parameters after each step agree up to float
    summation order (~1e-6) when the model has no batch norm and no dropout (dropout masks come
    from each rank's own RNG stream, drawn for its share) — e.g. ``lstm`` and ``ssl`` with
    ``dropout=0``. Batch norm layers (``cnn``, ``cnn2d``, ``crnn``) normalise over each rank's
    share: on CUDA they are converted to :class:`~torch.nn.SyncBatchNorm` (global statistics); on
    CPU (gloo) SyncBatchNorm is not available, so they use per-share statistics and the run
    differs slightly. A global batch with fewer clips than ranks is skipped (never the case with
    ``batch_size >= 2 * world_size`` except possibly the epoch's last batch).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

_CREATED = False  # whether init_from_env created the process group (then destroy() ends it)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(*, backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``).

    Without ``WORLD_SIZE > 1`` nothing happens. ``backend``: ``nccl`` when CUDA is available,
    ``gloo`` otherwise; with CUDA, this process's device becomes ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        global _CREATED
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        _CREATED = True
    return info()


def info() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=str(dist.get_backend()))


def is_enabled() -> bool:
    return info().enabled


def rank() -> int:
    return info().rank


def world_size() -> int:
    return info().world_size


def is_rank0() -> bool:
    return info().rank == 0


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def destroy() -> None:
    """Leave the process group, if :func:`init_from_env` created it (a caller's own group is left alone)."""
    global _CREATED
    if _CREATED and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CREATED = False


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not is_enabled():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not is_enabled():
        return [float(v) for v in values]
    return [float(sum(col)) for col in zip(*all_gather_object([float(v) for v in values]))]


class _Forward(nn.Module):
    """Routes DDP's forward through ``forward(model, *args)`` (e.g. the trainer's ``forward_model``,
    which picks a streaming model's fast padded path), so gradient sync sees every call."""

    def __init__(self, model: nn.Module, forward: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self._fn = forward

    def forward(self, *args, **kwargs):
        return self._fn(self.model, *args, **kwargs)


def wrap_model(model: nn.Module, device: torch.device | str, *,
               forward: Callable[..., torch.Tensor] | None = None) -> nn.Module:
    """What to call for training forward passes: ``model`` itself (or ``forward(model, ...)``) in
    one process, DistributedDataParallel around it under torchrun. Batch norm becomes SyncBatchNorm
    on CUDA. Parameters stay those of ``model`` (optimise, save and evaluate ``model``)."""
    mod = _Forward(model, forward) if forward is not None else model
    if not is_enabled():
        return mod
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = torch.device(device)
    if dev.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place for nested modules
        return DDP(mod, device_ids=[dev.index if dev.index is not None else torch.cuda.current_device()])
    return DDP(mod)


def shard_sampler(dataset_or_len, *, seed: int = 0, shuffle: bool = True, drop_last: bool = False):
    """A :class:`~torch.utils.data.DistributedSampler` for this rank (call ``set_epoch(epoch)`` each
    epoch), or None in one process. Accepts a dataset or a length."""
    if not is_enabled():
        return None
    from torch.utils.data import DistributedSampler

    data = range(dataset_or_len) if isinstance(dataset_or_len, int) else dataset_or_len
    return DistributedSampler(data, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed,
                              drop_last=drop_last)


def shard_rows(n: int) -> slice:
    """This rank's rows of a global batch of ``n``: ``rank::world_size``."""
    return slice(rank(), n, world_size()) if is_enabled() else slice(0, n)


def shard_batch(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """This rank's rows (``rank::world_size``) of each tensor of a global batch (None stays None)."""
    if not is_enabled():
        return tensors
    return tuple(None if t is None else t[rank() :: world_size()] for t in tensors)


def global_mean_cross_entropy(logits: torch.Tensor, target: torch.Tensor, global_target: torch.Tensor, *,
                              weight: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's part of the global batch's mean cross-entropy, scaled for DDP's gradient average.

    In one process: ``F.cross_entropy(logits, target, weight=weight)``. Under DDP: the sum of this
    share's (weighted) losses divided by the global batch's total weight, times ``world_size``,
    so that averaging the ranks' gradients gives exactly the global batch's gradient.
    """
    import torch.nn.functional as F

    if not is_enabled():
        return F.cross_entropy(logits, target, weight=weight)
    total = weight[global_target].sum() if weight is not None else torch.tensor(float(global_target.numel()))
    loss = F.cross_entropy(logits, target, weight=weight, reduction="sum")
    return loss * world_size() / total.to(loss.device)


def global_mean_loss(per_sample: torch.Tensor, target: torch.Tensor, global_target: torch.Tensor, *,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """Like :func:`global_mean_cross_entropy` for losses already computed per sample ``(batch,)``:
    the class-weighted mean ``sum(w[y] * l) / sum(w[y])`` over the global batch, scaled for DDP."""
    w = weight[target] if weight is not None else torch.ones_like(per_sample)
    loss = (w.to(per_sample.dtype) * per_sample).sum()
    if not is_enabled():
        return loss / w.sum().to(loss.dtype)
    total = weight[global_target].sum() if weight is not None else torch.tensor(float(global_target.numel()))
    return loss * world_size() / total.to(loss.device)


def gather_sharded(fn: Callable[[list[Any]], np.ndarray], items: Sequence[Any]) -> np.ndarray:
    """``fn(items)`` computed in shards: each rank runs ``fn`` on ``items[rank::world_size]`` and the
    row-wise results are gathered back into the input order (every rank gets the whole array)."""
    if not is_enabled():
        return fn(list(items))
    ws, r = world_size(), rank()
    local = fn(list(items[r::ws]))
    parts = all_gather_object(np.asarray(local))
    width = next((p.shape[1:] for p in parts if p.size), ())
    dtype = next((p.dtype for p in parts if p.size), np.float32)
    out = np.zeros((len(items), *width), dtype=dtype)
    for k, part in enumerate(parts):
        if part.size:
            out[k::ws] = part
    return out


def warm_cache(load: Callable[[list[Any]], Any], rows: Sequence[Any], *, enabled: bool = True) -> None:
    """Under DDP, let each rank fill a shared disk cache with its shard of ``rows`` (``load(shard)``),
    then wait for all: the following full load on every rank reads the cache."""
    if not (is_enabled() and enabled):
        return
    load(list(rows[rank() :: world_size()]))
    barrier()

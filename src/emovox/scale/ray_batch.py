"""``emovox classify --engine ray``: clips classified by a pool of model actors with Ray Data.

>>> with ray_session(RayOptions(num_cpus=2), part="data"):
...     for record in classify_with_ray(paths, ModelSpec("crnn"), BatchOptions(actors=2)):
...         ...                                    # one record per path, in order, errors included

The paths become a dataset of ``(index, path)`` rows in blocks of one batch each;
``map_batches`` hands each batch to one of the actors (:class:`ClipClassifier`), which loads the
model once through the public API (:func:`emovox.inference.load_model`, whatever runtime it uses)
and returns each clip's record, built by :func:`emovox.commands.records.build_record` exactly as local
``emovox classify`` builds it. The records come back to this process in input order (Ray Data's
``preserve_order``, and a reorder buffer behind it), so they stream into the output file.

On a cluster every node needs emovox and the model (a shipped name, or a folder at the same path
on every node), and the clips at the paths given (a shared file system): see docs/scale.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emovox.commands.records import build_record, keep_fields
from emovox.defaults import CONFIDENCE_THRESHOLD, MAX_CLIP_S
from emovox.scale.options import BatchOptions
from emovox.scale.ray_support import require_ray


@dataclass(frozen=True)
class ModelSpec:
    """What each actor loads and how it answers (``emovox classify``'s model flags)."""

    model: str | None = None
    backend: str = "auto"
    threshold: float = CONFIDENCE_THRESHOLD
    max_duration_s: float | None = MAX_CLIP_S
    labels: str | None = None
    top_k: int | None = None
    fields: tuple[str, ...] | None = None
    batch_size: int = 16
    #: decoding threads in each actor (None: predict_batch's default)
    decode_threads: int | None = None
    #: the model's threads in each actor (ONNX Runtime's; None: the loader's default, every core)
    threads: int | None = None
    #: ``--segments``: an :class:`emovox.segments.SegmentOptions`; each path then gives one record per speech segment
    segments: Any = None


class ClipClassifier:
    """A Ray Data actor: one model, loaded once; a batch of ``{"index", "path"}`` → ``{"index", "record"}``
    with each record as JSON text (records differ in their fields: errors have two)."""

    def __init__(self, spec: ModelSpec):
        from emovox.inference import load_model

        self.spec = spec
        self.model = load_model(spec.model, backend=spec.backend, threshold=spec.threshold,
                                max_duration_s=spec.max_duration_s, threads=spec.threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.spec
        paths = [str(p) for p in batch["path"]]
        if spec.segments is not None:
            return {"index": np.asarray(batch["index"]), "record": np.array([self._segments(p) for p in paths],
                                                                            dtype=object)}
        results = self.model.predict_batch(paths, labels=spec.labels, batch_size=spec.batch_size,
                                           num_workers=spec.decode_threads, errors="return")
        records = [json.dumps(keep_fields(build_record(p, r, top_k=spec.top_k), spec.fields))
                   for p, r in zip(paths, results)]
        return {"index": np.asarray(batch["index"]), "record": np.array(records, dtype=object)}


    def _segments(self, path: str) -> str:
        """A recording's segment records and its no-speech message, as JSON text (an error record when unreadable)."""
        from emovox.errors import AudioError

        spec = self.spec
        try:
            res = self.model.segments(path, labels=spec.labels, batch_size=spec.batch_size, options=spec.segments,
                                      max_duration_s=spec.max_duration_s)
        except AudioError as e:
            return json.dumps({"records": [{"path": path, "error": str(e)}]})
        records = [keep_fields(r, spec.fields) for r in res.records(path, top_k=spec.top_k)]
        return json.dumps({"records": records, "message": res.message})


def check_model(spec: ModelSpec) -> None:
    """Raise the loader's error here when the model is neither a path on this machine nor a shipped name
    (a local Ray sees the same files), rather than from every actor."""
    from pathlib import Path

    from emovox.inference import resolve_model_path

    if spec.model is None or not Path(spec.model).exists():
        resolve_model_path(spec.model)


def actor_count(ray: Any, options: BatchOptions, n_batches: int) -> int:
    """``options.actors``, else as many as the cluster's CPUs hold; never more than there are batches."""
    if options.actors is not None:
        wanted = options.actors
    else:
        wanted = int(ray.cluster_resources().get("CPU", 1) // options.cpus_per_actor)
    return max(1, min(wanted, n_batches))


def classify_with_ray(paths: Sequence[str], spec: ModelSpec, options: BatchOptions = BatchOptions(), *,
                      actor: type[ClipClassifier] = ClipClassifier) -> Iterator[dict[str, Any]]:
    """One record per path, in the order of ``paths``, from an actor pool (Ray must be connected:
    :func:`emovox.scale.ray_support.ray_session`). ``actor``: the actor class (a subclass can
    instrument it: benchmarks/ray_batch.py times each batch)."""
    ray = require_ray("data")
    if not paths:
        return
    per_batch = 1 if spec.segments is not None else spec.batch_size  # --segments: a long recording per call
    n_batches = math.ceil(len(paths) / per_batch)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)], override_num_blocks=n_batches)
    ds = ds.map_batches(actor, fn_constructor_kwargs={"spec": spec}, batch_size=per_batch,
                        batch_format="numpy", num_cpus=options.cpus_per_actor,
                        compute=ray.data.ActorPoolStrategy(size=actor_count(ray, options, n_batches)))
    pending: dict[int, str] = {}
    done = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        pending.update(zip((int(i) for i in batch["index"]), batch["record"]))
        while done in pending:
            yield from _unpack(json.loads(pending.pop(done)))
            done += 1
    if done != len(paths):
        raise RuntimeError(f"Ray returned {done + len(pending)} records for {len(paths)} clips")


def _unpack(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A clip's record, or (``--segments``) a recording's segment records, its no-speech message on stderr."""
    if "records" not in obj:
        yield obj
        return
    if obj.get("message"):
        import sys

        print(f"emovox classify: {obj['message']}", file=sys.stderr)
    yield from obj["records"]

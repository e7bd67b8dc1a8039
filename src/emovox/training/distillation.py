"""Knowledge distillation: train a student on a teacher model's soft labels and the true labels.

The loss of a training clip is ``(1 - w) * CE(student, true label) + w * T² * KL(p_T || q_T)`` with
``w`` the distillation weight, ``p_T = softmax(teacher logits / T)`` and ``q_T = softmax(student logits
/ T)`` at the distillation temperature ``T`` (Hinton et al. 2015; the ``T²`` keeps the gradient scale of
the soft term independent of ``T``). ``w = 1`` trains on the teacher alone, ``w = 0`` is ordinary training.

Teacher labels
    The teacher's raw logits (before its calibration temperature) for every training clip, in a JSON
    Lines file: a header line (``format``, the teacher, its labels and calibration temperature) and one
    line per clip ``{"key": SHA-1 of the clip's bytes, "path": ..., "logits": [...]}``. Clips are found by
    the content key (:func:`emovox.data.cache.content_key`), so the file stays valid when a corpus moves. The
    file is appended to and flushed as clips are done, so an interrupted run resumes where it stopped
    (a torn last line is ignored and recomputed). :func:`write_teacher_labels` writes it; ``emovox train
    --teacher MODEL`` computes the missing ones itself before training.

Computing them
    A frozen-backbone ``ssl`` teacher (the shipped ``default``) reads the backbone's hidden states from
    the training cache (:class:`emovox.data.backbone_data.HiddenStateCache`, filled by its own training), so
    its soft labels cost a head's forward pass per clip; clips not cached there run the encoder. Any
    other teacher runs its whole pipeline on the decoded clip.

Degraded copies (``--augment SPEC``)
    With multi-condition training (:mod:`emovox.training.multicondition`) each degraded copy of a clip gets the
    teacher's logits *on that copy*: a line of the file may carry ``"variant"`` (the copy's name: degradation,
    seed and babble pool, :class:`emovox.degrade.multicondition.DegradedCopy`), and the teacher runs on the
    degraded waveform. A student then learns what the teacher hears in noise, not the clean clip's answer.

Augmented crops
    Training also augments in the log-mel domain (random crops, speed, gain, noise, SpecAugment; see
    :mod:`emovox.data.cache`): an augmented crop gets the soft label of the version it was cut from (the
    teacher is not run on log-mel augmentations). Mixup mixes the soft labels with the same weight as the clips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from emovox.errors import TrainingError

TEACHER_LABELS_FORMAT = "emovox-teacher-labels"


class DistillationError(TrainingError):
    """Teacher labels that cannot be used: missing clips, other labels, an unreadable file."""


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, temperature: float,
                 teacher_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Per clip ``(batch,)``: ``T² * KL(softmax(teacher / T) || softmax(student / T))``.

    ``teacher_probs`` (``(batch, classes)``, already softened: :func:`soft_targets`) replaces
    ``teacher_logits`` when given (mixup mixes probabilities, not logits)."""
    t = float(temperature)
    p = teacher_probs if teacher_probs is not None else soft_targets(teacher_logits, t)
    log_q = torch.log_softmax(student_logits.float() / t, dim=-1)
    return F.kl_div(log_q, p, reduction="none").sum(dim=-1) * (t * t)


def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(teacher_logits.float() / float(temperature), dim=-1)


# ---------------------------------------------------------------------------------------------
# The teacher labels file


@dataclass
class TeacherLabels:
    """A teacher's logits per clip (:func:`entry_key`: content key, and a degraded copy's variant → logits), with
    the teacher's labels."""

    path: Path
    header: dict[str, Any]
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.header["labels"])

    @classmethod
    def read(cls, path: str | os.PathLike) -> TeacherLabels:
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise DistillationError(f"teacher labels {path}: cannot read ({e.strerror or e})") from e
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("format") != TEACHER_LABELS_FORMAT or not isinstance(header.get("labels"), list):
            raise DistillationError(f"teacher labels {path}: not an emovox teacher-labels file (its first line must "
                                    f"be a header with format {TEACHER_LABELS_FORMAT!r} and the teacher's labels)")
        out = cls(path, header)
        n = len(header["labels"])
        for i, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
                key = entry_key(str(entry["key"]), entry.get("variant"))
                logits = np.asarray(entry["logits"], dtype=np.float32)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if i == len(lines):  # a run killed mid-write: that clip is recomputed
                    break
                raise DistillationError(f"teacher labels {path}: line {i} is not a clip entry") from None
            if logits.shape != (n,) or not np.isfinite(logits).all():
                raise DistillationError(f"teacher labels {path}: line {i} has {logits.shape} logits, "
                                        f"expected {n} finite values")
            out.logits[key] = logits
            out.paths[key] = str(entry.get("path", ""))
        return out

    def check_labels(self, labels: Sequence[str]) -> None:
        """The student's labels must be the teacher's, in the same order."""
        if list(labels) != self.labels:
            raise DistillationError(
                f"teacher labels {self.path}: the teacher's labels {self.labels} differ from the student's "
                f"{list(labels)}; distil into the teacher's labels (e.g. --labels {','.join(self.labels)})")

    def lookup(self, paths: Sequence[str], copy=None) -> np.ndarray:
        """Logits ``(len(paths), n_labels)`` of clips by their content (``copy``: a
        :class:`~emovox.degrade.multicondition.DegradedCopy`, those of that degraded copy of each clip); a clip
        without an entry is an error."""
        from emovox.data.cache import content_key

        keys = [entry_key(content_key(p), None if copy is None else copy.variant(p)) for p in paths]
        missing = [p for p, k in zip(paths, keys) if k not in self.logits]
        if missing:
            what = "training clip(s)" if copy is None else f"training clips' degraded copy {copy.copy}"
            raise DistillationError(
                f"teacher labels {self.path}: no entry for {len(missing)} of {len(paths)} {what}, e.g. "
                f"{', '.join(map(str, missing[:3]))}; compute them with --teacher MODEL (or python -m benchmarks."
                "distill labels)")
        return np.stack([self.logits[k] for k in keys]).astype(np.float32)


def entry_key(key: str, variant: str | None) -> str:
    """A teacher-labels entry's name: the clip's content key, and for a degraded copy its variant."""
    return key if not variant else f"{key}|{variant}"


def _header(teacher: str, labels: Sequence[str], temperature: float) -> dict[str, Any]:
    from emovox import __version__

    return {"format": TEACHER_LABELS_FORMAT, "version": 1, "teacher": teacher, "labels": list(labels),
            "teacher_temperature": float(temperature), "logits": "raw (before the teacher's temperature)",
            "emovox_version": __version__}


# ---------------------------------------------------------------------------------------------
# Computing teacher labels


class Teacher:
    """A loaded teacher model that gives raw logits for clips (see the module docstring)."""

    def __init__(self, name_or_path: str | os.PathLike, *, cache=True):
        from emovox.data.backbone_data import cache_root
        from emovox.inference import resolve_model_path
        from emovox.modelio import load_model_dir

        self.name, folder = resolve_model_path(name_or_path)
        self.source = str(name_or_path)
        self.loaded = load_model_dir(folder)
        self.pipeline = self.loaded.pipeline.eval()
        self.labels = list(self.pipeline.labels)
        self.temperature = float(self.pipeline.temperature)
        model = self.pipeline.model
        self.cache = None
        if getattr(model, "head_kind", None) is not None and not getattr(model, "finetune_layers", 0):
            from emovox.data.backbone_data import HiddenStateCache

            root = cache_root(cache)
            if root is not None:
                self.cache = HiddenStateCache(root, model.backbone, model.layers, "cpu")

    @torch.inference_mode()
    def logits(self, row: Any, copy=None) -> np.ndarray:
        """The teacher's raw logits for one clip (a row or a path; cached backbone states when it has them), or
        for its degraded ``copy`` (a :class:`~emovox.degrade.multicondition.DegradedCopy`: the degraded waveform,
        the row's speaker left out of babble as training leaves it out)."""
        from emovox.audio import load_audio
        from emovox.data.cache import row_path
        from emovox.defaults import MAX_TRAINING_CLIP_S

        path, rate = row_path(row), self.pipeline.sample_rate_hz
        if copy is not None:
            wave = copy.load(row, sample_rate_hz=rate, max_duration_s=MAX_TRAINING_CLIP_S)
            return self.pipeline(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]).numpy()[0]
        states = self.cache.get(path) if self.cache is not None else None
        if states is not None:
            x = torch.from_numpy(np.asarray(states, dtype=np.float32))[None]
            return self.pipeline.model.head(x).numpy()[0]
        wave = load_audio(path, sample_rate_hz=rate, max_duration_s=MAX_TRAINING_CLIP_S)
        return self.pipeline(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]).numpy()[0]

    @torch.inference_mode()
    def logits_from_pooled(self, rows: np.ndarray) -> np.ndarray:
        """A probe teacher's (``mean`` head) raw logits from pooled rows ``(n, n_layers * hidden)``: what a
        :class:`~emovox.degrade.multicondition.PooledStateCache` holds for clips and their degraded copies."""
        model = self.pipeline.model
        if getattr(model, "head_kind", None) != "mean":
            raise DistillationError(f"teacher {self.source}: pooled rows need a probe teacher with the 'mean' head")
        x = torch.from_numpy(np.asarray(rows, dtype=np.float32))
        return model.classifier((x - model.pooled_mean) / model.pooled_std).numpy()


def open_teacher_labels(out: str | os.PathLike, t: Teacher) -> TeacherLabels:
    """The labels file at ``out`` ready to append to (created with a header when absent); refuses a file
    written by a teacher with other labels."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and out.stat().st_size > 0:
        have = TeacherLabels.read(out)
        if have.labels != t.labels:
            raise DistillationError(f"teacher labels {out}: written for labels {have.labels}, the teacher {t.source} "
                                    f"has {t.labels}; write to another file")
        _truncate_torn_line(out)
        return have
    have = TeacherLabels(out, _header(t.source, t.labels, t.temperature))
    out.write_text(json.dumps(have.header) + "\n", encoding="utf-8")
    return have


def append_entry(fh, have: TeacherLabels, key: str, variant: str | None, path: str, logits: np.ndarray) -> None:
    """One clip's (or degraded copy's) logits, into the open file and ``have``."""
    have.logits[entry_key(key, variant)], have.paths[entry_key(key, variant)] = logits.astype(np.float32), path
    entry = {"key": key, **({"variant": variant} if variant else {}), "path": path,
             "logits": [round(float(v), 5) for v in logits]}
    fh.write(json.dumps(entry) + "\n")


def write_teacher_labels(teacher: str | os.PathLike | Teacher, rows: Sequence[Any], out: str | os.PathLike, *,
                         copies: Sequence[Any] = (), cache=True, echo: Callable[[str], None] | None = None,
                         flush_every: int = 64) -> TeacherLabels:
    """Append the teacher's logits for every clip of ``rows`` (rows or paths) not yet in ``out`` (created with a
    header when absent), and for each of their degraded ``copies`` (:class:`~emovox.degrade.multicondition.
    DegradedCopy`), flushing every ``flush_every`` entries; returns the complete file's contents. Refuses a
    file written by a teacher with other labels. Unreadable clips are reported and left out."""
    from emovox.audio import AudioError
    from emovox.data.cache import content_key, row_path

    say = echo or (lambda s: None)
    t = teacher if isinstance(teacher, Teacher) else Teacher(teacher, cache=cache)
    have = open_teacher_labels(out, t)
    unique = {}
    for r in rows:
        unique.setdefault(content_key(row_path(r)), r)
    todo = [(k, r, c) for c in (None, *copies) for k, r in unique.items()
            if entry_key(k, None if c is None else c.variant(row_path(r))) not in have.logits]
    total = len(unique) * (1 + len(copies))
    say(f"teacher {t.source}: {total - len(todo)} of {total} entries already in {out}, computing {len(todo)}")
    with open(out, "a", encoding="utf-8") as fh:
        for i, (key, r, c) in enumerate(todo, start=1):
            p = row_path(r)
            try:
                logits = t.logits(r, copy=c)
            except (AudioError, OSError) as e:
                say(f"skipped unreadable clip {p}: {e}")
                continue
            append_entry(fh, have, key, None if c is None else c.variant(p), p, logits)
            if i % flush_every == 0 or i == len(todo):
                fh.flush()
                say(f"teacher labels: {i}/{len(todo)}")
    return have


def _truncate_torn_line(path: Path) -> None:
    """Drop a last line without its newline (a run killed mid-write), so appending starts a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def teacher_logits_for(rows: Sequence[Any], labels: Sequence[str], *, teacher: str | None, teacher_labels: str | None,
                       copies: Sequence[Any] = (), cache=True, say: Callable[[str], None] | None = None) -> np.ndarray:
    """The teacher logits ``(1 + len(copies), len(rows), n_labels)`` of training rows (index 0) and of each of
    their degraded ``copies`` (index k: copy k - 1), in the student's label order: read from ``teacher_labels``
    (computing the missing ones first when ``teacher`` is given too), or computed into memory when only
    ``teacher`` is given."""
    from emovox.data.cache import row_path

    paths = [row_path(r) for r in rows]
    if teacher_labels is not None and teacher is not None:
        tl = write_teacher_labels(teacher, rows, teacher_labels, copies=copies, cache=cache, echo=say)
    elif teacher_labels is not None:
        tl = TeacherLabels.read(teacher_labels)
        if say:
            say(f"teacher labels {teacher_labels}: {len(tl.logits)} entries from teacher {tl.header.get('teacher')}")
    elif teacher is not None:
        if say:
            say(f"teacher {teacher}: computing soft labels for {len(paths)} training clips"
                + (f" and {len(copies)} degraded cop{'y' if len(copies) == 1 else 'ies'} of each" if copies else "")
                + " (not saved: give --teacher-labels FILE to keep them)")
        t = Teacher(teacher, cache=cache)
        tl = TeacherLabels(Path("(memory)"), _header(t.source, t.labels, t.temperature))
        from emovox.data.cache import content_key

        for c in (None, *copies):
            for r, p in zip(rows, paths):
                tl.logits[entry_key(content_key(p), None if c is None else c.variant(p))] = \
                    t.logits(r, copy=c).astype(np.float32)
    else:
        raise DistillationError("distillation needs a teacher: --teacher MODEL and/or --teacher-labels FILE")
    tl.check_labels(labels)
    return np.stack([tl.lookup(paths)] + [tl.lookup(paths, copy=c) for c in copies])

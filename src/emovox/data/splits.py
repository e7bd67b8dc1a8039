"""Speaker-independent splits of manifest rows (indices into the row list).

Every function returns :class:`Split` objects that say which kind of split was made: ``"speaker"``
(no speaker in both parts) or ``"stratified"`` (random by label, used only when speakers are
unknown, and then said so in :attr:`Split.message`). A :class:`Split` unpacks as ``train, test``.

Rows are :class:`emovox.data.corpora.ManifestRow` objects or anything with ``label`` and ``speaker``
attributes (or keys). Clips without a speaker, mixed with clips that have one, are treated as
their own single-clip speakers, and the message says how many there were.

Hand-written rather than scikit-learn's ``StratifiedGroupKFold`` / ``GroupShuffleSplit``: those draw
other partitions for the same seed, and a model folder's recorded split (and every cached run) must stay
the one emovox has always drawn; they also cannot fall back to a stratified split when speakers are unknown.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

SPEAKER = "speaker"
STRATIFIED = "stratified"


@dataclass(frozen=True)
class Split:
    """Indices of the training and held-out (test or validation) rows, and how they were chosen."""

    train: list[int]
    test: list[int]
    kind: str
    message: str
    train_speakers: tuple[str, ...] = field(default=())
    test_speakers: tuple[str, ...] = field(default=())

    @property
    def val(self) -> list[int]:
        """The held-out indices (alias of :attr:`test` for train/validation splits)."""
        return self.test

    @property
    def speaker_independent(self) -> bool:
        return self.kind == SPEAKER

    def __iter__(self) -> Iterator[list[int]]:
        return iter((self.train, self.test))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "train": list(self.train), "test": list(self.test),
                "train_speakers": list(self.train_speakers), "test_speakers": list(self.test_speakers)}


def _get(row, key: str):
    return row.get(key) if isinstance(row, dict) else getattr(row, key, None)


def _labels(rows: Sequence) -> list[str]:
    return [_get(r, "label") for r in rows]


def _groups(rows: Sequence) -> tuple[dict[str, list[int]], int]:
    """Speaker → row indices (insertion order); clips without a speaker get a private group.

    Returns the groups and how many clips had no speaker.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    unknown = 0
    for i, r in enumerate(rows):
        spk = _get(r, "speaker")
        if spk is None or str(spk) == "":
            unknown += 1
            groups[f"\0clip{i}"].append(i)
        else:
            groups[str(spk)].append(i)
    return dict(groups), unknown


def _real(speakers: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(s for s in speakers if not s.startswith("\0")))


def _unknown_note(unknown: int) -> str:
    return f"; {unknown} clip(s) without speaker information were split as individual clips" if unknown else ""


def _pct(part: int, total: int) -> str:
    return f"{100.0 * part / total:.1f}%" if total else "0%"


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value}")


# --------------------------------------------------------------------------- stratified


def _stratified_indices(labels: Sequence[str], fraction: float, rng: random.Random) -> tuple[list[int], list[int]]:
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    train, test = [], []
    for lab in sorted(by_label):
        idx = by_label[lab][:]
        rng.shuffle(idx)
        n = len(idx)
        k = round(n * fraction)
        if n >= 2:
            k = min(max(k, 1), n - 1)  # every label on both sides when it has two clips
        test += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(test)


def stratified_split(rows: Sequence, test_fraction: float, *, seed: int = 0) -> Split:
    """Random split by label (each label's clips divided ``1 - test_fraction`` / ``test_fraction``).

    Not speaker-independent: use it only when no speaker is known (the message says so).
    """
    _check_fraction("test_fraction", test_fraction)
    if not rows:
        raise ValueError("cannot split an empty list of rows")
    train, test = _stratified_indices(_labels(rows), test_fraction, random.Random(seed))
    has_speakers = any(_get(r, "speaker") for r in rows)
    reason = ("speakers ignored: stratified random split (not speaker-independent)" if has_speakers
              else "no speaker information: stratified random split (not speaker-independent)")
    msg = f"{reason}; {len(train)} train / {len(test)} held out ({_pct(len(test), len(rows))})"
    return Split(train, test, STRATIFIED, msg)


def _stratified_folds(rows: Sequence, k: int, seed: int) -> list[Split]:
    labels = _labels(rows)
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for lab in sorted(by_label):
        idx = by_label[lab][:]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[(j + offset) % k].append(i)
        offset += len(idx)  # start the next label where this one stopped: folds stay the same size
    out = []
    for f, test in enumerate(folds):
        test_set = set(test)
        train = [i for i in range(len(rows)) if i not in test_set]
        msg = (f"no speaker information: stratified random fold {f + 1}/{k} (not speaker-independent); "
               f"{len(train)} train / {len(test)} test")
        out.append(Split(train, sorted(test), STRATIFIED, msg))
    return out


# --------------------------------------------------------------------------- by speaker


def speaker_folds(rows: Sequence, k: int, *, seed: int = 0) -> list[Split]:
    """``k`` speaker-independent folds: every speaker is in exactly one test fold.

    Speakers are dealt largest-first to the fold with the fewest clips (ties broken by ``seed``), so
    folds are balanced by clip count. Each :class:`Split` unpacks as ``(train, test)``. Without any
    speaker information the folds are stratified by label instead (``kind == "stratified"``).
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if not rows:
        raise ValueError("cannot split an empty list of rows")
    groups, unknown = _groups(rows)
    if unknown == len(rows):
        if k > len(rows):
            raise ValueError(f"cannot make {k} folds from {len(rows)} clips")
        return _stratified_folds(rows, k, seed)
    if k > len(groups):
        raise ValueError(f"cannot make {k} speaker folds from {len(groups)} speaker(s): {', '.join(_real(groups)[:10])}")
    rng = random.Random(seed)
    names = list(groups)
    rng.shuffle(names)
    names.sort(key=lambda s: -len(groups[s]))  # stable: equal sizes stay in shuffled order
    folds: list[list[str]] = [[] for _ in range(k)]
    sizes = [0] * k
    for s in names:
        f = min(range(k), key=lambda j: (sizes[j], len(folds[j])))
        folds[f].append(s)
        sizes[f] += len(groups[s])
    out = []
    for f, test_speakers in enumerate(folds):
        test_set = set(test_speakers)
        test = sorted(i for s in test_speakers for i in groups[s])
        train = sorted(i for s in names if s not in test_set for i in groups[s])
        msg = (f"speaker-independent fold {f + 1}/{k}: {len(_real(test_speakers))} test speaker(s), "
               f"{len(train)} train / {len(test)} test clips ({_pct(len(test), len(rows))})" + _unknown_note(unknown))
        out.append(Split(train, test, SPEAKER, msg, _real(s for s in names if s not in test_set), _real(test_speakers)))
    return out


def _speaker_key(name: str) -> str:
    """A comparable form of a speaker id: lower case, leading zeros of numbers dropped."""
    name = str(name).strip().lower()
    return str(int(name)) if name.isdigit() else name


def resolve_speaker(name: str | int, known: Iterable[str]) -> str:
    """The namespaced speaker among ``known`` meant by ``name``.

    Accepts the full name (``ravdess_01``), the corpus's own id (``01``, ``1``, ``1001``, ``OAF``) or
    a folder name (``Actor_01``). Raises ValueError when unknown or ambiguous.
    """
    known = sorted(set(known))
    raw = str(name).strip()
    if raw in known:
        return raw
    candidates = {raw, re.sub(r"^(actor|speaker|spk)[_\- ]?", "", raw, flags=re.IGNORECASE)}
    keys = {_speaker_key(c) for c in candidates if c}
    matches = []
    for s in known:
        short = s.split("_", 1)[1] if "_" in s else s
        if _speaker_key(s) in keys or _speaker_key(short) in keys:
            matches.append(s)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"speaker {name!r} is ambiguous: {', '.join(matches)}; give the full name")
    shown = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
    raise ValueError(f"unknown speaker {name!r}; known speakers: {shown}")


def test_speaker_split(rows: Sequence, test_speakers: str | int | Iterable[str | int]) -> Split:
    """Hold out the named speakers as the test set (``'ravdess_01'``, ``'01'``, ``1``, ``'Actor_01'``).

    ``test_speakers`` may also be one comma-separated string (``'1,2,Actor_03'``).
    """
    if isinstance(test_speakers, (str, int)):
        test_speakers = [s for s in str(test_speakers).split(",") if s.strip()]
    requested = list(test_speakers)
    if not requested:
        raise ValueError("no test speakers given")
    groups, unknown = _groups(rows)
    known = _real(groups)
    if not known:
        raise ValueError("these rows have no speaker information, so no speaker can be held out; "
                         "use stratified_split (not speaker-independent)")
    chosen = {resolve_speaker(s, known) for s in requested}
    train_spk = [s for s in groups if s not in chosen]
    if not train_spk:
        raise ValueError(f"every speaker is in the test set ({', '.join(sorted(chosen))}); nothing left to train on")
    test = sorted(i for s in chosen for i in groups[s])
    train = sorted(i for s in train_spk for i in groups[s])
    msg = (f"speaker-independent split: test speakers {', '.join(sorted(chosen))}; "
           f"{len(train)} train / {len(test)} test clips ({_pct(len(test), len(rows))})" + _unknown_note(unknown))
    return Split(train, test, SPEAKER, msg, _real(train_spk), _real(chosen))


test_speaker_split.__test__ = False  # not a pytest test, despite its name


def train_val_split(rows: Sequence, val_fraction: float, *, seed: int = 0) -> Split:
    """Hold out about ``val_fraction`` of the clips for validation.

    With speakers known, whole speakers are held out, chosen (by a seeded search) so the held-out
    share is close to ``val_fraction`` and every label appears on both sides when possible. With no
    speaker information, or a single speaker, the split is stratified by label and the message says
    it is not speaker-independent.
    """
    _check_fraction("val_fraction", val_fraction)
    if not rows:
        raise ValueError("cannot split an empty list of rows")
    groups, unknown = _groups(rows)
    if unknown == len(rows) or len(groups) < 2:
        split = stratified_split(rows, val_fraction, seed=seed)
        if len(groups) < 2 and unknown < len(rows):
            msg = split.message.replace("speakers ignored", f"only one speaker ({_real(groups)[0]})")
            split = Split(split.train, split.test, STRATIFIED, msg)
        return split
    labels = _labels(rows)
    all_labels = set(labels)
    group_labels = {s: Counter(labels[i] for i in idx) for s, idx in groups.items()}
    n, target = len(rows), val_fraction * len(rows)
    names = list(groups)
    rng = random.Random(seed)
    trials = max(20, min(200, 20000 // len(names)))
    best, best_score = None, None
    for _ in range(trials):
        order = names[:]
        rng.shuffle(order)
        chosen, total = [], 0
        for s in order:
            c = len(groups[s])
            if len(chosen) < len(names) - 1 and (total + c <= target or abs(total + c - target) < abs(total - target)):
                chosen.append(s)
                total += c
        if not chosen:  # every speaker is bigger than the target: take the smallest
            chosen = [min(order, key=lambda s: len(groups[s]))]
            total = len(groups[chosen[0]])
        val_labels: Counter = Counter()
        for s in chosen:
            val_labels.update(group_labels[s])
        train_labels = Counter({lab: c - val_labels[lab] for lab, c in Counter(labels).items()})
        missing = sum(1 for lab in all_labels if not val_labels[lab]) + sum(
            1 for lab in all_labels if train_labels[lab] <= 0)
        score = missing + abs(total - target) / max(target, 1.0)
        if best_score is None or score < best_score:
            best, best_score = chosen, score
    chosen_set = set(best)
    test = sorted(i for s in best for i in groups[s])
    train = sorted(i for s in names if s not in chosen_set for i in groups[s])
    val_labels = {labels[i] for i in test}
    note = "" if val_labels == all_labels else f"; labels missing from validation: {', '.join(sorted(all_labels - val_labels))}"
    msg = (f"speaker-independent split: {len(_real(best))} of {len(_real(names))} speakers held out; "
           f"{len(train)} train / {len(test)} validation clips ({_pct(len(test), n)}, requested "
           f"{100 * val_fraction:.1f}%)" + note + _unknown_note(unknown))
    return Split(train, test, SPEAKER, msg, _real(s for s in names if s not in chosen_set), _real(best))


# --------------------------------------------------------------------------- subsets


def balanced_subset(rows: Sequence, n: int, *, seed: int = 0) -> list[int]:
    """Indices (ascending) of at most ``n`` rows, spread as evenly as the data allows: labels take turns
    (a label that runs out leaves its turns to the others), and within a label its speakers take turns,
    each speaker's clips in a random order fixed by ``seed``. All rows when ``n >= len(rows)``.

    Keeping every speaker (rather than the first few) leaves speaker-independent splits possible.
    """
    if n < 1:
        raise ValueError(f"a subset needs at least 1 row, got n={n}")
    if n >= len(rows):
        return list(range(len(rows)))
    rng = random.Random(seed)
    by_label: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(rows):
        by_label[str(_get(r, "label"))][str(_get(r, "speaker"))].append(i)
    queues = []
    for label in sorted(by_label):
        speakers = [by_label[label][s] for s in sorted(by_label[label])]
        for clips in speakers:
            rng.shuffle(clips)
        longest = max(len(c) for c in speakers)
        queues.append([c[k] for k in range(longest) for c in speakers if k < len(c)])
    picked: list[int] = []
    for k in range(max(len(q) for q in queues)):
        picked += [q[k] for q in queues if k < len(q)][: n - len(picked)]
        if len(picked) == n:
            break
    return sorted(picked)

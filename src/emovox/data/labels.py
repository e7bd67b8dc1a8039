"""Emotion taxonomies, mappings between them, and music moods.

Canonical emotion names are lower-case English words (``neutral``, ``calm``, ``happy``, ``sad``,
``angry``, ``fearful``, ``disgust``, ``surprised``). Corpus codes (``ANG``, ``ps``, ``W``...) are
turned into these names by :mod:`emovox.data.corpora`; this module maps canonical names between
taxonomies and folds probability vectors accordingly (mass is summed, never lost).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emovox.errors import LabelError

RAVDESS8 = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
EKMAN7 = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
CREMA6 = ("neutral", "happy", "sad", "angry", "fearful", "disgust")
BASIC5 = ("happy", "sad", "angry", "surprised", "neutral")  # the Core ML mobile CNN, in that order
APP6 = ("happy", "sad", "angry", "neutral", "fearful", "surprised")  # the streaming MFCC-LSTM's front-end, class ids 0..5
CORE4 = ("neutral", "happy", "sad", "angry")

GOEMOTIONS28 = (
    "admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity",
    "desire", "disappointment", "disapproval", "disgust", "embarrassment", "excitement", "fear",
    "gratitude", "grief", "joy", "love", "nervousness", "optimism", "pride", "realization", "relief",
    "remorse", "sadness", "surprise", "neutral",
)
#: GoEmotions' own Ekman grouping (Demszky et al. 2020, ekman_mapping.json) plus neutral.
GOEMOTIONS_EKMAN = {
    "anger": ("anger", "annoyance", "disapproval"),
    "disgust": ("disgust",),
    "fear": ("fear", "nervousness"),
    "joy": ("joy", "amusement", "approval", "excitement", "gratitude", "love", "optimism", "relief",
            "pride", "admiration", "desire", "caring"),
    "sadness": ("sadness", "disappointment", "embarrassment", "grief", "remorse"),
    "surprise": ("surprise", "realization", "confusion", "curiosity"),
    "neutral": ("neutral",),
}
#: GoEmotions' Ekman names → the speech models' canonical names (so text and audio share 7 labels).
TEXT_EKMAN_TO_AUDIO = {"anger": "angry", "disgust": "disgust", "fear": "fearful", "joy": "happy",
                       "sadness": "sad", "surprise": "surprised", "neutral": "neutral"}

#: emovox's canonical order of emotion names: how a model orders its labels when the data decides them
#: and their set is no taxonomy's (see :func:`order_labels`), and how summaries list them.
CANONICAL_ORDER = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "boredom")

TAXONOMIES: dict[str, tuple[str, ...]] = {
    "ravdess8": RAVDESS8,
    "ekman7": EKMAN7,
    "crema6": CREMA6,
    "basic5": BASIC5,
    "app6": APP6,
    "core4": CORE4,
    "goemotions28": GOEMOTIONS28,
    "goemotions_ekman": tuple(GOEMOTIONS_EKMAN),
}

#: Spelling variants seen in corpora and user CSVs → canonical name.
SYNONYMS = {
    "neutral": "neutral", "neu": "neutral", "n": "neutral",
    "calm": "calm",
    "happy": "happy", "happiness": "happy", "joy": "happy", "hap": "happy",
    "sad": "sad", "sadness": "sad",
    "angry": "angry", "anger": "angry", "ang": "angry",
    "fearful": "fearful", "fear": "fearful", "fea": "fearful", "afraid": "fearful",
    "disgust": "disgust", "disgusted": "disgust", "dis": "disgust",
    "surprised": "surprised", "surprise": "surprised", "ps": "surprised", "pleasant_surprise": "surprised",
    "pleasant surprise": "surprised", "sur": "surprised",
    "boredom": "boredom", "bored": "boredom",
}

#: Music mood per emotion (the FastAPI wav2vec2 hybrid: neutral chill, calm relaxing, happy upbeat; the rest completed).
MUSIC_MOODS = {
    "neutral": "chill",
    "calm": "relaxing",
    "happy": "upbeat",
    "sad": "melancholic",
    "angry": "intense",
    "fearful": "suspenseful",
    "disgust": "dark",
    "surprised": "energetic",
    "boredom": "ambient",
}

#: Merges applied to training/evaluation labels: a clip whose label still has no target is dropped.
DEFAULT_MERGES = {"calm": "neutral", "boredom": "neutral"}

#: Merges applied when folding *probabilities* into a smaller label set, where mass may never be
#: lost: each label without a target follows this chain until it lands in the target set
#: (valence/arousal neighbours: disgust→angry, fearful→sad, surprised→happy). Override any of
#: them with an explicit mapping, e.g. ``{"fearful": "surprised"}``.
FOLD_FALLBACKS = {"calm": "neutral", "boredom": "neutral", "disgust": "angry", "fearful": "sad",
                  "surprised": "happy"}


#: Merges a taxonomy implies when training (on top of :data:`DEFAULT_MERGES`), so that training under
#: it treats a label as folding probabilities into it does: the streaming MFCC-LSTM's six-class front-end takes
#: disgust as angry (the document's "Option B"; :data:`FOLD_FALLBACKS` folds disgust→angry too).
TAXONOMY_MERGES: dict[str, dict[str, str]] = {"app6": {"disgust": "angry"}}


def taxonomy(name: str) -> tuple[str, ...]:
    try:
        return TAXONOMIES[name]
    except KeyError:
        raise LabelError(f"unknown label taxonomy {name!r}; available: {', '.join(TAXONOMIES)}") from None


def order_labels(labels) -> tuple[list[str], str]:
    """The order of a model's labels when the data decides them (no ``--labels`` list or taxonomy), and
    the rule that chose it, in words.

    When the labels are exactly the set of a named taxonomy (:data:`TAXONOMIES`, first match), its
    order: a ``labels.csv`` with the Core ML mobile CNN's five labels gives basic5's happy, sad, angry, surprised,
    neutral. Otherwise :data:`CANONICAL_ORDER` for the names it knows, then any others alphabetically.
    Neither depends on the order of files or rows, so the same label set always gives the same order.
    """
    present = set(labels)
    for name, tax in TAXONOMIES.items():
        if set(tax) == present:
            return list(tax), f"the {name} taxonomy's order (the data holds exactly its labels)"
    order = [lab for lab in CANONICAL_ORDER if lab in present] + sorted(present - set(CANONICAL_ORDER))
    return order, "emovox's canonical order (" + ", ".join(CANONICAL_ORDER) + "), other labels alphabetically after"


def canonical(label: str) -> str:
    """Normalise a label's spelling (``'ANG'``, ``'Anger'``, ``'ps'``) to its canonical name."""
    key = str(label).strip().lower()
    if key in SYNONYMS:
        return SYNONYMS[key]
    raise LabelError(
        f"unknown emotion label {label!r}; accepted: {', '.join(sorted(set(SYNONYMS.values())))} "
        f"(and spellings such as {', '.join(sorted(k for k in SYNONYMS if len(k) > 3)[:6])}, ...)"
    )


def music_mood(label: str) -> str:
    return MUSIC_MOODS.get(label, MUSIC_MOODS.get(DEFAULT_MERGES.get(label, ""), "neutral"))


#: The forms a label spec (``--labels``, ``labels=``) takes, for error messages.
SPEC_FORMS = (
    "a taxonomy name ({names})",
    "a label list 'happy,sad,angry' (the model's labels, in that order)",
    "merges 'disgust=angry,calm=neutral' (the other labels kept)",
    "a list with merges 'happy,sad,angry,neutral,fearful,surprised,disgust=angry' (or 'app6,fearful=sad')",
    "a .json file holding a list or a {{\"source\": \"target\"}} object",
)
_LABEL_RE = re.compile(r"^\w[\w .'-]*$")


def spec_forms() -> str:
    """The accepted label-spec forms, one per line (for error messages and --help)."""
    return "\n".join("  - " + f.format(names=", ".join(TAXONOMIES)) for f in SPEC_FORMS)


@dataclass(frozen=True)
class LabelSpec:
    """A parsed label spec: the target labels in order (None: the merges' images decide), the
    user's merges ``{source: target}``, and the taxonomy it names (if any)."""

    target: tuple[str, ...] | None
    merges: dict[str, str] = field(default_factory=dict)
    taxonomy: str | None = None


def _malformed(spec, why: str) -> LabelError:
    return LabelError(f"label spec {spec!r}: {why}. Accepted forms:\n{spec_forms()}")


def _label_name(spec, item: str) -> str:
    item = item.strip()
    if not _LABEL_RE.match(item):
        raise _malformed(spec, f"{item!r} is not a label name")
    return canonical(item) if item.lower() in SYNONYMS else item


def parse_label_spec(spec: str | Sequence[str] | Mapping[str, str] | os.PathLike) -> LabelSpec:
    """Parse any label-spec form (see :data:`SPEC_FORMS`); a malformed one raises :class:`LabelError`
    naming the spec and showing the accepted forms."""
    if isinstance(spec, (str, os.PathLike)) and str(spec).endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise _malformed(str(spec), "no such JSON file")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _malformed(str(path), f"unreadable JSON ({e})") from e
        except RecursionError:  # [[[[...]]]]: Python's JSON parser recurses once per level
            raise _malformed(str(path), "JSON nested too deeply (a label spec is a flat list or object)") from None
        if not isinstance(spec, (list, dict)):
            raise _malformed(str(path), "the JSON file must hold a list or an object")
    if isinstance(spec, Mapping):
        items = [f"{k}={v}" for k, v in spec.items()]
    elif isinstance(spec, str):
        if spec.strip() in TAXONOMIES:
            return LabelSpec(TAXONOMIES[spec.strip()], {}, spec.strip())
        items = spec.split(",")
    else:
        items = [str(x) for x in spec]
    items = [it.strip() for it in items if it.strip()]
    if not items:
        raise _malformed(spec, "it names no label")
    target: list[str] = []
    merges: dict[str, str] = {}
    names = None
    for it in items:
        if "=" in it:
            parts = it.split("=")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise _malformed(spec, f"{it!r} is not a merge 'source=target'")
            merges[_label_name(spec, parts[0])] = _label_name(spec, parts[1])
        elif it in TAXONOMIES:
            names = it if names is None else names
            target += TAXONOMIES[it]
        else:
            target.append(_label_name(spec, it))
    if len(items) == 1 and not merges and isinstance(spec, str):
        raise _malformed(spec, f"unknown label taxonomy {items[0]!r}")
    return _checked_spec(spec, target, merges, names)


def _checked_spec(spec, target: list[str], merges: dict[str, str], names: str | None) -> LabelSpec:
    dup = sorted({t for t in target if target.count(t) > 1})
    if dup:
        raise _malformed(spec, f"it lists {', '.join(dup)} twice")
    if not target:
        return LabelSpec(None, merges)
    if names is not None:  # a taxonomy with merges: merged labels leave it
        target = [t for t in target if t not in merges]
    both = [s for s in merges if s in target]
    if both:
        raise _malformed(spec, f"{', '.join(both)} is both listed and merged into another label")
    outside = [f"{s}={t}" for s, t in merges.items() if t not in target]
    if outside:
        raise _malformed(spec, f"merge {', '.join(outside)} sends to a label the list does not name")
    return LabelSpec(tuple(target), merges, names)


class LabelMap:
    """Maps source labels to a target label set; folds probability vectors by summing mass.

    Build one with :meth:`LabelMap.build`, from a taxonomy name, a list of labels, a dict
    ``{source: target}`` of merges, or a path to a JSON file holding either.
    """

    def __init__(self, source: Sequence[str], target: Sequence[str], mapping: Mapping[str, str | None]):
        self.source = tuple(source)
        self.target = tuple(target)
        self.mapping = {s: mapping.get(s) for s in self.source}
        for s, t in self.mapping.items():
            if t is not None and t not in self.target:
                raise LabelError(f"label map sends {s!r} to {t!r}, which is not in the target labels {self.target}")
        self._matrix = np.zeros((len(self.source), len(self.target)), dtype=np.float64)
        for i, s in enumerate(self.source):
            t = self.mapping[s]
            if t is not None:
                self._matrix[i, self.target.index(t)] = 1.0

    @property
    def unmapped(self) -> tuple[str, ...]:
        """Source labels with no target (dropped for training/evaluation)."""
        return tuple(s for s, t in self.mapping.items() if t is None)

    @property
    def lossless(self) -> bool:
        return not self.unmapped

    @property
    def unreachable(self) -> tuple[str, ...]:
        """Target labels that no source label maps to: the model cannot express them (always 0)."""
        hit = set(self.mapping.values())
        return tuple(t for t in self.target if t not in hit)

    def __call__(self, label: str) -> str | None:
        return self.mapping.get(label)

    def fold(self, probs: np.ndarray) -> np.ndarray:
        """Fold ``(..., len(source))`` probabilities into ``(..., len(target))`` by summing mass.

        Raises when some source label has no target (mass would be lost).
        """
        if not self.lossless:
            raise LabelError(
                f"cannot fold probabilities: {', '.join(self.unmapped)} have no target in {list(self.target)}; "
                "give a mapping for them"
            )
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape[-1] != len(self.source):
            raise LabelError(f"expected {len(self.source)} probabilities, got {probs.shape[-1]}")
        return probs @ self._matrix

    def to_dict(self) -> dict:
        return {"source": list(self.source), "target": list(self.target), "mapping": self.mapping}

    @classmethod
    def build(cls, source: Sequence[str], spec: str | Sequence[str] | Mapping[str, str] | os.PathLike | None,
              *, fallbacks: Mapping[str, str] = DEFAULT_MERGES) -> LabelMap:
        """A map from ``source`` labels to the labels named by ``spec``.

        - ``None``: identity.
        - a taxonomy name (``'ekman7'``) or a label list: each source label maps to itself when
          present, else through ``fallbacks`` (default :data:`DEFAULT_MERGES`, calm→neutral; chains are
          followed) and the taxonomy's own :data:`TAXONOMY_MERGES` (app6: disgust→angry), else it is
          unmapped. Pass ``fallbacks=FOLD_FALLBACKS`` to fold probabilities.
        - a dict ``{source: target}`` (or ``'disgust=angry,calm=neutral'``, or a JSON file path):
          user merges applied first; target labels are the images of the sources, in source order.
        - a list with merges (``'happy,sad,angry,neutral,disgust=angry'``, ``'app6,fearful=sad'``):
          the list's labels in its order, the merges applied before the fallbacks.

        Any other spec raises :class:`LabelError` naming it and showing the accepted forms.
        """
        source = tuple(source)
        if spec is None:
            return cls(source, source, {s: s for s in source})
        parsed = parse_label_spec(spec)
        if parsed.target is None:  # merges only: the other labels are kept
            target, mapping = [], {}
            for s in source:
                t = parsed.merges.get(s, s)
                mapping[s] = t
                if t not in target:
                    target.append(t)
            return cls(source, target, mapping)
        target = parsed.target
        chain = {**fallbacks, **TAXONOMY_MERGES.get(parsed.taxonomy or "", {}), **parsed.merges}
        mapping: dict[str, str | None] = {}
        for s in source:
            t, seen = s, set()
            while t is not None and t not in target and t not in seen:
                seen.add(t)
                t = chain.get(t)
            mapping[s] = t if t in target else None
        return cls(source, target, mapping)


def fold_scores(scores: Mapping[str, float], target: str | Sequence[str] | Mapping[str, str]) -> dict[str, float]:
    """Fold a ``{label: probability}`` dict into another label set (mass summed, never lost)."""
    lm = LabelMap.build(list(scores), target, fallbacks=FOLD_FALLBACKS)
    folded = lm.fold(np.array([scores[s] for s in lm.source]))
    return {t: float(p) for t, p in zip(lm.target, folded)}

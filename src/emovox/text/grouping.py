"""Output label sets for text models: GoEmotions' 28 labels, its Ekman grouping, or audio names.

Rule (GoEmotions' own Ekman grouping, :data:`emovox.data.labels.GOEMOTIONS_EKMAN`, plus neutral):
an Ekman group's score is the **max** over its member labels' sigmoid scores (scores of a
multi-label model are independent probabilities, so they are not summed), and a group is
predicted when **any** member label is predicted (above its own threshold). ``audio7`` is the
same seven groups renamed to the speech models' canonical names
(:data:`emovox.data.labels.TEXT_EKMAN_TO_AUDIO`) in :data:`emovox.data.labels.EKMAN7` order, so text and
audio predictions share their labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emovox.data.labels import EKMAN7, GOEMOTIONS28, GOEMOTIONS_EKMAN, TEXT_EKMAN_TO_AUDIO, LabelError

TAXONOMIES = ("goemotions", "ekman", "audio7")
_ALIASES = {"goemotions": "goemotions", "goemotions28": "goemotions", "28": "goemotions",
            "ekman": "ekman", "goemotions_ekman": "ekman", "audio7": "audio7", "audio": "audio7"}


def normalize_taxonomy(name: str) -> str:
    try:
        return _ALIASES[str(name).strip().lower()]
    except KeyError:
        raise LabelError(f"unknown text label set {name!r}; accepted: {', '.join(TAXONOMIES)}") from None


def groups_for(labels: Sequence[str], taxonomy: str) -> tuple[tuple[str, ...], list[list[int]]]:
    """Output names and, per output, the indices of its member labels in ``labels``."""
    taxonomy = normalize_taxonomy(taxonomy)
    labels = list(labels)
    if taxonomy == "goemotions":
        return tuple(labels), [[i] for i in range(len(labels))]
    missing = [m for members in GOEMOTIONS_EKMAN.values() for m in members if m not in labels]
    if missing:
        raise LabelError(f"label set {taxonomy!r} needs a GoEmotions model; this model lacks {', '.join(missing)}")
    groups = {g: [labels.index(m) for m in members] for g, members in GOEMOTIONS_EKMAN.items()}
    if taxonomy == "ekman":
        return tuple(groups), list(groups.values())
    by_audio = {TEXT_EKMAN_TO_AUDIO[g]: idx for g, idx in groups.items()}
    return EKMAN7, [by_audio[name] for name in EKMAN7]


def group_scores(scores: np.ndarray, labels: Sequence[str] = GOEMOTIONS28, taxonomy: str = "ekman"
                 ) -> tuple[tuple[str, ...], np.ndarray]:
    """``(..., len(labels))`` scores → ``(..., n_groups)`` scores, max over members."""
    names, groups = groups_for(labels, taxonomy)
    scores = np.asarray(scores)
    return names, np.stack([scores[..., g].max(-1) for g in groups], -1)


def group_decisions(pred: np.ndarray, labels: Sequence[str] = GOEMOTIONS28, taxonomy: str = "ekman"
                    ) -> tuple[tuple[str, ...], np.ndarray]:
    """Boolean ``(..., len(labels))`` predictions → per group: any member predicted."""
    names, groups = groups_for(labels, taxonomy)
    pred = np.asarray(pred, dtype=bool)
    return names, np.stack([pred[..., g].any(-1) for g in groups], -1)

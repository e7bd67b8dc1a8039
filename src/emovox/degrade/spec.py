"""Degradation specs: what ``emovox train --augment SPEC`` and the robustness benchmark accept.

Forms:

- one degradation ``KIND[:VALUE]``, the value fixed (``pink:5``) or a range drawn per clip (``pink:0..20``);
- a chain joined by ``+`` (``room:0.6+babble:10``), applied left to right;
- a preset name (:data:`PRESETS`, e.g. ``real-world``);
- a YAML or JSON file (or inline JSON) of steps: ``{"steps": [{"spec": "room:0.2..1.2", "p": 0.4},
  {"one_of": ["pink:0..20", "babble:0..20"], "p": 0.7}], "copies": 2}`` — each step applied with probability
  ``p`` (default 1), ``one_of`` picking one of its specs at random.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .conditions import KINDS, DegradeError, Sources, seeded

#: Part of every cache key (the implementations' generation before kinds got versions of their own).
KEY_EPOCH = 4


class SpecError(ValueError):
    """A degradation spec emovox cannot read; the message lists the accepted forms."""



def accepted_forms() -> str:
    return ("accepted: KIND[:VALUE] or KIND:LOW..HIGH with KIND one of " + ", ".join(KINDS)
            + "; chains joined by '+' (room:0.6+babble:10); a preset (" + ", ".join(PRESETS)
            + '); or a YAML/JSON file of {"steps": [{"spec": ..., "p": ...} | {"one_of": [...], "p": ...}]}')


# The multi-condition training mix: one additive noise most of the time, a room or a channel often, the level
# moved half the time. Noise is babble of other training speakers or synthetic colour; never the evaluation's.
REAL_WORLD = {
    "steps": [
        {"one_of": ["babble:0..20", "pink:0..20", "white:5..25", "brown:0..20"], "p": 0.7},
        {"spec": "room:0.2..1.2", "p": 0.35},
        {"one_of": ["telephone", "mp3:16..64", "opus:8..24"], "p": 0.35},
        {"spec": "gain:-35..6", "p": 0.5},
        {"spec": "clip:1..10", "p": 0.05},
    ],
}
# Calls and voice messages: always a telephone line or a low-bitrate codec, often with the caller's surroundings.
PHONE = {
    "steps": [
        {"one_of": ["babble:5..25", "pink:5..25", "white:10..30"], "p": 0.5},
        {"spec": "room:0.2..0.8", "p": 0.3},
        {"one_of": ["telephone", "telephone:1", "mp3:16..32", "opus:6..16"]},
        {"spec": "gain:-20..6", "p": 0.5},
    ],
}
PRESETS: dict[str, dict[str, Any]] = {"real-world": REAL_WORLD, "phone": PHONE}


@dataclass(frozen=True)
class Step:
    kind: str
    low: float
    high: float

    def text(self) -> str:
        if KINDS[self.kind].limits == (0.0, 0.0):
            return self.kind
        return f"{self.kind}:{self.low:g}" if self.low == self.high else f"{self.kind}:{self.low:g}..{self.high:g}"

    def draw(self, rng: np.random.Generator) -> float:
        return self.low if self.low == self.high else float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class Stage:
    """One entry of ``steps``: a chain, or a choice between chains, applied with probability ``p``."""

    options: tuple[tuple[Step, ...], ...]
    p: float = 1.0

    def text(self) -> str:
        body = " | ".join("+".join(s.text() for s in chain) for chain in self.options)
        return body if self.p == 1.0 else f"{body} (p={self.p:g})"


def _error(msg: str) -> SpecError:
    return SpecError(f"{msg}; {accepted_forms()}")


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _error(f"degradation {spec!r}: {text!r} is not a number") from None
    if not np.isfinite(value):
        raise _error(f"degradation {spec!r}: {text!r} is not a finite number")
    return value


def parse_step(text: str) -> Step:
    kind, _, value = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise _error(f"unknown degradation {kind!r} in {text!r}")
    info = KINDS[kind]
    if not value.strip():
        if info.default is None:
            raise _error(f"degradation {kind!r} needs a value ({info.unit}), e.g. {kind}:10")
        return Step(kind, info.default, info.default)
    low_text, sep, high_text = value.partition("..")
    low = _number(low_text, text)
    high = _number(high_text, text) if sep else low
    lo, hi = info.limits
    if low > high or low < lo or high > hi:
        raise _error(f"degradation {text!r}: {info.unit} must lie in [{lo:g}, {hi:g}] (low..high)")
    return Step(kind, low, high)


def parse_chain(text: str) -> tuple[Step, ...]:
    parts = [p for p in str(text).split("+")]
    if not all(p.strip() for p in parts):
        raise _error(f"empty degradation in {text!r}")
    return tuple(parse_step(p) for p in parts)


def _stage(entry: Any) -> Stage:
    if isinstance(entry, str):
        return Stage((parse_chain(entry),))
    if not isinstance(entry, dict) or not ({"spec", "one_of"} & set(entry)):
        raise _error(f"a step must be a spec string or an object with 'spec' or 'one_of', got {entry!r}")
    unknown = set(entry) - {"spec", "one_of", "p"}
    if unknown:
        raise _error(f"unknown step keys {sorted(unknown)}")
    p = entry.get("p", 1.0)
    if not isinstance(p, int | float) or not 0.0 <= float(p) <= 1.0:
        raise _error(f"step probability p must be a number in [0, 1], got {p!r}")
    options = entry["one_of"] if "one_of" in entry else [entry["spec"]]
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise _error(f"'one_of' must be a non-empty list of spec strings, got {options!r}")
    return Stage(tuple(parse_chain(o) for o in options), float(p))


def _document(spec: str) -> dict[str, Any] | None:
    """The preset, inline JSON or YAML/JSON file ``spec`` names, or None for a plain spec string."""
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.lstrip().startswith("{"):
        try:
            return json.loads(spec)
        except json.JSONDecodeError as e:
            raise _error(f"inline JSON spec is not valid JSON ({e})") from None
    path = Path(spec)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise _error(f"degradation file {spec} does not exist")
        return _read_document(path)
    return None


def _read_document(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as e:  # json and yaml raise their own error types
        raise _error(f"degradation file {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict):
        raise _error(f"degradation file {path} must hold an object with 'steps'")
    return doc


@dataclass
class Degrader:
    """A parsed spec: ``degrade(wave, seed)`` gives the degraded waveform, the same for the same seed."""

    stages: tuple[Stage, ...]
    name: str
    copies: int = 1
    sources: Sources = field(default_factory=Sources)

    def describe(self) -> str:
        return "; ".join(s.text() for s in self.stages)

    def key(self) -> str:
        """What identifies this degradation in a cache key: the parsed steps (not how they were written), the
        versions of the kinds they use and the room bank."""
        kinds = sorted({s.kind for st in self.stages for chain in st.options for s in chain})
        extra = "".join(f"\0{k}{KINDS[k].version}" for k in kinds if KINDS[k].version != 1)
        extra += f"\0{self.sources.room_bank}" if "room" in kinds else ""
        return hashlib.sha1(f"{KEY_EPOCH}\0{self.describe()}{extra}".encode()).hexdigest()[:16]

    def draw(self, seed: int) -> list[tuple[Step, float]]:
        """The steps and values applied for ``seed`` (a preset may draw none: then the first stage is forced)."""
        rng = np.random.default_rng(seed)
        chosen = []
        for stage in self.stages:
            if rng.random() < stage.p:
                chain = stage.options[int(rng.integers(len(stage.options)))]
                chosen += [(s, s.draw(rng)) for s in chain]
        if not chosen and self.stages:
            chain = self.stages[0].options[int(rng.integers(len(self.stages[0].options)))]
            chosen = [(s, s.draw(rng)) for s in chain]
        return chosen

    def degrade(self, wave: np.ndarray, seed: int, *, speaker: str | None = None) -> tuple[np.ndarray, str]:
        """``(degraded wave, what was applied)``; length and sample rate (16 kHz) are kept. ``speaker``: the clip's
        speaker, left out of babble."""
        x = np.asarray(wave, dtype=np.float32)
        applied = []
        self.sources.exclude_speaker = speaker
        with seeded(seed):
            for step, value in self.draw(seed):
                x = KINDS[step.kind].apply(x, value, self.sources)
                applied.append(Step(step.kind, value, value).text())
        if not np.all(np.isfinite(x)):
            raise DegradeError(f"degradation {'+'.join(applied)} produced non-finite samples")
        return x, "+".join(applied)


def parse_spec(spec: str, *, babble: Sequence[str | os.PathLike | np.ndarray] = (),
               babble_speakers: Sequence[str] = (), noise_dir: str | os.PathLike | None = None,
               room_bank: str = "train") -> Degrader:
    """Read a spec (see the module's doc); refuse it with a message that lists the accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise _error("empty degradation spec")
    spec = spec.strip()
    doc = _document(spec)
    if doc is None:
        stages = (Stage((parse_chain(spec),)),)
        copies = 1
    else:
        steps = doc.get("steps")
        if not isinstance(steps, list) or not steps:
            raise _error("a degradation document needs a non-empty 'steps' list")
        stages = tuple(_stage(s) for s in steps)
        copies = doc.get("copies", 1)
        if not isinstance(copies, int) or isinstance(copies, bool) or not 1 <= copies <= 64:
            raise _error(f"'copies' must be a whole number from 1 to 64, got {copies!r}")
    degrader = Degrader(stages, spec, copies, Sources(babble=list(babble), babble_speakers=list(babble_speakers),
                                                              noise_dir=noise_dir, room_bank=room_bank))
    kinds = {s.kind for st in stages for chain in st.options for s in chain}
    if "noise" in kinds:
        from .conditions import noise_files

        noise_files(noise_dir)  # refuse a missing, empty or unreadable folder now, not mid-training
    return degrader

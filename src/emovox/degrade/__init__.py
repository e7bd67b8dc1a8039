"""Degradations of speech as users record it: noise, other talkers, rooms, telephone lines, codecs, level.

Built on audiomentations (and pyroomacoustics through its room simulator). A *spec* names one degradation
(``pink:5``), a chain (``room:0.6+babble:10``), a preset (``real-world``) or a YAML/JSON file; see
:mod:`emovox.degrade.spec`. Everything is seeded: the same clip, spec and seed give the same samples.
"""

from .quality import InputQuality, measure_quality
from .spec import PRESETS, Degrader, SpecError, parse_spec

__all__ = ["PRESETS", "Degrader", "InputQuality", "SpecError", "measure_quality", "parse_spec"]

"""The shipped model cards say what is true today: inference runs on ONNX Runtime without torch, and the figures a
card quotes for the runtime are the ones BENCHMARKS.md measured."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "src" / "emovox" / "assets" / "models").glob("*/MODEL_CARD.md"))


@pytest.mark.parametrize("card", CARDS, ids=lambda p: p.parent.name)
def test_no_card_blames_torch_for_the_command_or_promises_a_measurement(card):
    text = " ".join(card.read_text().split())
    assert not re.search(r"mostly importing torch|\(importing torch\)", text), card
    assert "not measured yet" not in text, card


def test_the_default_cards_runtime_figures_are_the_benchmarks():
    card = " ".join((ROOT / "src/emovox/assets/models/default/MODEL_CARD.md").read_text().split())
    bench = " ".join((ROOT / "BENCHMARKS.md").read_text().split())
    assert "`emovox classify one.flac` takes 1.02 s" in card and "1.02 s against 3.53 s" in bench
    for figure in ("2.7e-5", "77.5 %", "59.37"):
        assert figure in card and figure in bench, figure

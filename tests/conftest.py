"""Shared fixtures: the real corpora in ../shared/data, and a small synthetic corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: ../shared/data beside the repository (never copied into it).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids spin-wait contention
    (several times faster than two when another process is busy)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the real corpora (``ravdess/``, ``crema-d/``, ``goemotions/``); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent (it lives in ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """A synthetic corpus (4 labels x 4 speakers x 5 clips of 1 s, 16 kHz WAV + labels.csv)."""
    from emovox.synth import make_synthetic_corpus

    return make_synthetic_corpus(tmp_path_factory.mktemp("synth_corpus"))

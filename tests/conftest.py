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
    from emovox.data.synth import make_synthetic_corpus

    return make_synthetic_corpus(tmp_path_factory.mktemp("synth_corpus"))


def _seed003_librosa_loop(audio, sr: int = 16000):
    """Seed 003's backend features, literally: peak normalisation, librosa.util.frame, and one
    librosa.feature.mfcc call per non-zero 25 ms frame, averaged over its columns."""
    import warnings

    import librosa
    import numpy as np

    audio = audio / (np.max(np.abs(audio)) + 1e-9)
    frames = librosa.util.frame(audio, frame_length=int(0.025 * sr), hop_length=int(0.010 * sr))
    mfcc_features = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "n_fft=2048 is too large")  # the seed's call, as written
        for i in range(frames.shape[1]):
            frame = frames[:, i]
            if np.all(frame == 0):
                continue
            mfccs = librosa.feature.mfcc(y=frame, sr=sr, n_mfcc=13)
            mfcc_features.append(np.mean(mfccs, axis=1))
    return np.array(mfcc_features)


@pytest.fixture(scope="session")
def seed003_loop():
    """The function computing seed 003's features with its per-frame librosa loop (librosa: test-only)."""
    pytest.importorskip("librosa")
    return _seed003_librosa_loop

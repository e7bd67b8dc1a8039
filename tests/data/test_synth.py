"""Synthetic corpus: layout, determinism, speed, and that its labels are learnable across speakers."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

from emovox.cli import main
from emovox.data.corpora import scan, summarize
from emovox.data.labels import LabelError
from emovox.data.splits import speaker_folds
from emovox.data.synth import RECIPES, make_synthetic_corpus, synth_clip


def test_default_corpus_layout(synth_corpus):
    with open(synth_corpus / "labels.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["path", "label", "speaker"]
    assert len(table) == 1 + 4 * 4 * 5
    assert table[1] == ["synthetic_spk01_neutral_001.wav", "neutral", "spk01"]
    assert all(row[0].startswith("synthetic_") and (synth_corpus / row[0]).is_file() for row in table[1:])
    assert "SYNTHETIC" in (synth_corpus / "README.txt").read_text()
    x, sr = sf.read(synth_corpus / table[1][0], dtype="float32")
    assert sr == 16000 and x.shape == (16000,) and 0.05 < np.abs(x).max() < 1.0

    rows = scan(synth_corpus)
    s = summarize(rows)
    assert s["clips"] == 80 and s["speakers"] == 4
    assert s["labels"] == {"neutral": 20, "happy": 20, "sad": 20, "angry": 20}
    assert {r.speaker for r in rows} == {"csv_spk01", "csv_spk02", "csv_spk03", "csv_spk04"}
    assert all(r.duration_s == pytest.approx(1.0) for r in rows)


def test_deterministic(tmp_path):
    make_synthetic_corpus(tmp_path / "a", seed=7)
    make_synthetic_corpus(tmp_path / "b", seed=7)
    make_synthetic_corpus(tmp_path / "c", seed=8)
    name = "synthetic_spk02_happy_003.wav"
    a, b, c = (sf.read(tmp_path / d / name)[0] for d in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_options(tmp_path):
    out = make_synthetic_corpus(tmp_path, labels=["Anger", "fear", "ps", "boredom", "calm"], n_speakers=2,
                                clips_per_label_per_speaker=2, duration_s=0.5, sample_rate_hz=8000)
    assert out == tmp_path
    rows = scan(out)
    assert {r.label for r in rows} == {"angry", "fearful", "surprised", "boredom", "calm"}
    assert len(rows) == 5 * 2 * 2
    info = sf.info(rows[0].path)
    assert info.samplerate == 8000 and info.frames == 4000
    with pytest.raises(LabelError, match="unknown emotion label 'grumpy'"):
        make_synthetic_corpus(tmp_path / "x", labels=["grumpy"])
    with pytest.raises(ValueError, match="duplicates"):
        make_synthetic_corpus(tmp_path / "x", labels=["angry", "anger"])
    with pytest.raises(ValueError, match="at least 1"):
        make_synthetic_corpus(tmp_path / "x", n_speakers=0)


def test_every_label_has_a_recipe():
    for label in RECIPES:
        x = synth_clip(label, duration_s=0.25)
        assert x.dtype == np.float32 and x.shape == (4000,) and np.isfinite(x).all() and np.abs(x).max() < 1.0


def _features(x: np.ndarray, sr: int = 16000) -> np.ndarray:
    """Mean and spread of a 24-band log spectrum plus frame-energy statistics (plain NumPy)."""
    frame, hop = 512, 256
    n = 1 + (len(x) - frame) // hop
    frames = np.stack([x[i * hop: i * hop + frame] for i in range(n)]) * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-10
    edges = np.geomspace(1, power.shape[1], 25).astype(int)
    bands = np.log(np.stack([power[:, a:max(b, a + 1)].mean(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=1))
    energy = np.log(power.sum(axis=1))
    return np.concatenate([bands.mean(axis=0), bands.std(axis=0), [energy.mean(), energy.std()]])


def test_labels_are_learnable_across_speakers(tmp_path):
    """A nearest-centroid classifier on simple spectra separates the labels on unseen speakers."""
    root = make_synthetic_corpus(tmp_path, labels=tuple(RECIPES), n_speakers=4, clips_per_label_per_speaker=4,
                                 duration_s=0.5)
    rows = scan(root, with_duration=False)
    feats = np.stack([_features(sf.read(r.path, dtype="float32")[0]) for r in rows])
    labels = np.array([r.label for r in rows])
    correct = 0
    for train, test in speaker_folds(rows, 4):
        mu, sd = feats[train].mean(axis=0), feats[train].std(axis=0) + 1e-6
        z = (feats - mu) / sd
        classes = sorted(set(labels[train]))
        centroids = np.stack([z[train][labels[train] == c].mean(axis=0) for c in classes])
        pred = np.array(classes)[np.argmin(((z[test][:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
        correct += int((pred == labels[test]).sum())
    accuracy = correct / len(rows)
    assert accuracy > 0.8, f"speaker-independent accuracy {accuracy:.2f} on 9 synthetic labels (chance 0.11)"


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--labels", "happy,sad", "angry", "--speakers", "2",
                 "--clips", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote 18 synthetic clips" in out and "labels.csv" in out
    s = summarize(scan(tmp_path / "s"))
    assert s["clips"] == 18 and s["speakers"] == 2 and s["labels"] == {"happy": 6, "sad": 6, "angry": 6}
    assert main(["synth", "--out", str(tmp_path / "t"), "--labels", "grumpy"]) == 2
    assert "unknown emotion label 'grumpy'" in capsys.readouterr().err

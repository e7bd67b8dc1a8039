"""What `emovox train` leaves in its output folder: the model, no lock file; nothing at all after a run that failed."""

from __future__ import annotations

import pytest

from emovox.cli import main
from emovox.data.synth import make_synthetic_corpus
from emovox.errors import TrainingError
from emovox.training.run import LOCK_FILE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_synthetic_corpus(tmp_path_factory.mktemp("c"), labels=("angry", "happy", "sad"), n_speakers=3,
                                 clips_per_label_per_speaker=2)


def test_a_finished_run_leaves_no_lock_file(corpus, tmp_path):
    out = tmp_path / "outputs"
    assert main(["train", "--data_dir", str(corpus), "--model", "cnn", "--epochs", "1", "--threads", "1",
                 "--output_dir", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (out / "best_model.pth").exists()
    assert not (out / LOCK_FILE).exists()


def test_a_failed_run_leaves_no_folder(corpus, tmp_path, monkeypatch, capsys):
    import emovox.training.run as run

    def fail(*_, **__):
        raise TrainingError("no usable clips")

    monkeypatch.setattr(run, "load_training_data", fail)
    out = tmp_path / "outputs"
    assert main(["train", "--data_dir", str(corpus), "--model", "cnn", "--epochs", "1", "--output_dir", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "no usable clips" in capsys.readouterr().err
    assert not out.exists()
    kept = tmp_path / "kept"  # a folder that was there before the run stays, without the lock
    kept.mkdir()
    assert main(["train", "--data_dir", str(corpus), "--model", "cnn", "--epochs", "1", "--output_dir", str(kept),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert kept.is_dir() and list(kept.iterdir()) == []


def test_checkpoint_pt_is_documented_where_the_user_looks():
    """`checkpoint.pt` (what --resume continues from) is named in `emovox train --help` and docs/training.md's
    output folder list."""
    from pathlib import Path

    from emovox.cli import build_parser

    help_text = build_parser(only="train")._subparsers._group_actions[0].choices["train"].format_help()
    assert "checkpoint.pt" in help_text and "--resume" in help_text
    out_folder = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text().split("## Output folder")[1]
    assert "checkpoint.pt" in out_folder.split("\n## ")[0]

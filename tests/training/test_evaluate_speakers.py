"""`emovox evaluate` on the speakers a model was trained on warns that its figures are not held-out ones."""

from __future__ import annotations

import json

from emovox.cli import main
from emovox.data.synth import make_synthetic_corpus


def test_evaluate_on_training_speakers_warns(tmp_path, capsys):
    corpus = make_synthetic_corpus(tmp_path / "c", labels=("angry", "happy", "sad"), n_speakers=3,
                                   clips_per_label_per_speaker=2)
    out = tmp_path / "m"
    assert main(["train", "--data_dir", str(corpus), "--model", "cnn", "--epochs", "1", "--threads", "1",
                 "--output_dir", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    split = json.loads((out / "model_meta.json").read_text())["split"]
    assert split["train_speakers"] and not set(split["train_speakers"]) & set(split["val_speakers"])
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), str(corpus), "--output-dir", str(tmp_path / "ev"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    err = capsys.readouterr().err
    assert "trained on" in err and "not held-out" in err and f"--speakers {split['val_speakers'][0]}" in err, err
    assert main(["evaluate", "--model", str(out), str(corpus), "--speakers", ",".join(split["val_speakers"]),
                 "--output-dir", str(tmp_path / "ev2"), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "trained on" not in capsys.readouterr().err

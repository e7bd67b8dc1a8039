"""emovox train --recipe, --config and --max-samples, the label-order rule, and train --help."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest

from emovox.cli import build_parser, main
from emovox.commands import train as train_cmd
from emovox.commands.options import OptionError
from emovox.data.corpora import scan
from emovox.data.labels import BASIC5, order_labels
from emovox.data.splits import balanced_subset
from emovox.data.synth import make_synthetic_corpus
from emovox.training.plan import map_labels

SEED000_ORDER = ["happy", "sad", "angry", "surprised", "neutral"]  # seed 000's "Emotion Classes (in order)"


@pytest.fixture(scope="module")
def five_label_corpus(tmp_path_factory):
    """Seed 000's five labels, written in another order (3 speakers x 2 clips of 1 s each)."""
    return make_synthetic_corpus(tmp_path_factory.mktemp("five"), labels=("neutral", "surprised", "angry", "sad",
                                                                         "happy"),
                                 n_speakers=3, clips_per_label_per_speaker=2)


def _settings(argv, tmp_path=None, config=None):
    if config is not None:
        path = tmp_path / "train.yaml"
        path.write_text(config)
        argv = [*argv, "--config", str(path)]
    args = build_parser().parse_args(["train", *argv])
    return train_cmd.settings(args)[0]


# ---------------------------------------------------------------------------------------------
# The mobile recipe end to end (seed 000's output folder, Core ML and ONNX names, shapes, class order)


def test_mobile_recipe_writes_seed000_outputs(five_label_corpus, tmp_path, capsys):
    ct = pytest.importorskip("coremltools")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "outputs"
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 2\nbatch_size: 8\n")  # the config file beats the recipe's 50 epochs, batch 32
    rc = main(["train", "--recipe", "mobile", "--data_dir", str(five_label_corpus), "--config", str(config),
               "--threads", "1", "--output_dir", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    said = capsys.readouterr().out
    assert "recipe mobile (seed 000" in said and "changed by the config file or flags: epochs=2, batch_size=8" in said
    for name in ("best_model.pth", "emotion_classifier.onnx", "EmotionClassifier.mlmodel", "confusion_matrix.png",
                 "training_history.json", "model_config.json", "labels.json", "metrics_overall.json",
                 "export/export.json", "export/preprocessing.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "labels.json").read_text()) == SEED000_ORDER
    meta = json.loads((out / "model_meta.json").read_text())
    assert meta["recipe"] == "mobile" and meta["model"] == "cnn" and 40_000 < meta["parameters"] < 60_000
    assert (meta["train_config"]["epochs"], meta["train_config"]["batch_size"]) == (2, 8)
    assert len(json.loads((out / "training_history.json").read_text())) == 2
    features = json.loads((out / "model_config.json").read_text())["features"]
    assert (features["n_mels"], features["n_fft"], features["hop_length"], features["num_frames"]) == (64, 2048, 512, 100)

    spec = ct.models.MLModel(str(out / "EmotionClassifier.mlmodel"), skip_model_load=True).get_spec()
    (i,), (o,) = spec.description.input, spec.description.output
    assert i.name == "log_mel_spectrogram" and list(i.type.multiArrayType.shape) == [1, 64, 100]
    assert o.name == "emotion_logits" and list(o.type.multiArrayType.shape) == [1, 5]
    assert json.loads(spec.description.metadata.userDefined["labels"]) == SEED000_ORDER

    sess = ort.InferenceSession(str(out / "emotion_classifier.onnx"), providers=["CPUExecutionProvider"])
    (si,), (so,) = sess.get_inputs(), sess.get_outputs()
    assert si.name == "log_mel_spectrogram" and si.shape[1:] == [64, 100] and so.name == "emotion_logits"
    logits = sess.run(None, {si.name: np.full((1, 64, 100), -40.0, np.float32)})[0]
    assert logits.shape == (1, 5)
    assert json.loads(sess.get_modelmeta().custom_metadata_map["labels"]) == SEED000_ORDER


# ---------------------------------------------------------------------------------------------
# Layers: defaults < recipe < config file < explicit flags


def test_explicit_flags_beat_the_recipe_even_when_equal_to_the_default(tmp_path):
    a = _settings(["--recipe", "hybrid", "--data_dir", "d"])
    assert (a.model, a.labels, a.batch_size, a.epochs, a.backbone, a.ssl_head) == ("ssl", "ravdess8", 8, 20,
                                                                                   "whisper-base", "cnn")
    assert a.model_options == ["channels=18", "hidden=64"] and a.lr == 1e-3  # untouched: TrainConfig's default
    a = _settings(["--recipe", "hybrid", "--data_dir", "d", "--epochs", "50", "--labels", "core4"])
    assert (a.epochs, a.labels, a.batch_size) == (50, "core4", 8)  # 50 is the default, typed: it wins
    a = _settings(["--recipe", "hybrid", "--data_dir", "d", "--batch_size", "16"], tmp_path,
                  "batch_size: 4\nepochs: 3\n")
    assert (a.batch_size, a.epochs) == (16, 3)  # flag > config file > recipe
    a = _settings(["--recipe", "hybrid", "--data_dir", "d", "--model-option", "hidden=32", "--model-option",
                   "dropout=0.1"])
    assert a.model_options == ["channels=18", "hidden=32", "dropout=0.1"]  # model options add up, KEY by KEY
    # another model family: the hybrid's backbone options are not applied, so the crnn trains
    a = _settings(["--recipe", "hybrid", "--data_dir", "d", "--model", "crnn"])
    assert a.backbone is None and a.model_options is None and a.batch_size == 8
    cfg = train_cmd.train_config(a, build_parser().parse_args(["train"])._train_options.defaults())
    assert cfg.model == "crnn" and cfg.model_kwargs == {}


def test_every_recipe_builds_its_train_config():
    defaults = build_parser().parse_args(["train"])._train_options.defaults()
    expect = {"mobile": ("cnn", "basic5", 100, 64), "backend": ("cnn2d", "basic5", 32, 64),
              "streaming": ("lstm", "app6", None, 128)}
    for name, (model, labels, frames, mels) in expect.items():
        a = _settings(["--recipe", name, "--data_dir", "d"])
        cfg = train_cmd.train_config(a, defaults)
        feats = cfg.feature_config()
        assert (cfg.model, cfg.labels, feats.num_frames, feats.n_mels) == (model, labels, frames, mels), name
    a = _settings(["--recipe", "streaming", "--data_dir", "d"])
    assert a.save_full_model and a.features == "framewise-librosa-mfcc13"
    a = _settings(["--recipe", "mobile", "--data_dir", "d", "--time_steps", "50", "--export", "onnx"])
    assert train_cmd.train_config(a, defaults).feature_config().num_frames == 50 and a.export == ["onnx"]


def test_seed000_all_options_command_parses_as_written():
    a = _settings("--data_dir data --csv_path data/labels.csv --epochs 50 --batch_size 32 --lr 0.001 --val_split 0.2 "
                  "--n_mels 64 --time_steps 100 --sample_rate 16000 --use_augmentation --early_stopping_patience 5 "
                  "--output_dir outputs".split())
    assert (a.data_dir, a.csv_path, a.n_mels, a.time_steps, a.use_augmentation, a.patience) == (
        ["data"], "data/labels.csv", 64, 100, True, 5)


# ---------------------------------------------------------------------------------------------
# Config files


def test_seed002_dataset_config_keys(tmp_path):
    a = _settings(["--recipe", "hybrid", "--data_dir", "d"], tmp_path,
                  "# data/dataset_config.yaml\nmax_samples: 5000\nbatch_size: 8\ntrain_split: 0.8\n"
                  "num_epochs: 20\nwav2vec_model: facebook/wav2vec2-base\n")
    assert (a.max_samples, a.batch_size, a.val_split, a.epochs, a.backbone) == (5000, 8, 0.2, 20,
                                                                                "facebook/wav2vec2-base")
    a = _settings([], tmp_path, "data_dir: [ravdess, crema-d]\nuse-augmentation: true\nlabels: [happy, sad]\n"
                                "model_option: {channels: [8, 8, 8]}\nexport: onnx\n")
    assert (a.data_dir, a.use_augmentation, a.labels, a.model_options, a.export) == (
        ["ravdess", "crema-d"], True, "happy,sad", ["channels=[8, 8, 8]"], ["onnx"])
    a = _settings(["--data_dir", "d"], tmp_path, "recipe: mobile\nbatch_size: 16\n")  # a recipe named in the file
    assert (a.model, a.features, a.batch_size, a.export) == ("cnn", "seed000", 16, ["onnx", "coreml"])


@pytest.mark.parametrize("text, message", [
    ("batch_size: 8\ndataset_name: ravdess\n", "unknown key(s) dataset_name; valid keys: "),
    ("batch_size: eight\n", "batch_size: 'eight' is not valid"),
    ("epochs: 2.5\n", "epochs: 2.5 is not valid: a whole number is needed"),
    ("use_augmentation: 1\n", "use_augmentation: expected true or false"),
    ("train_split: 1.5\n", "train_split: expected a fraction between 0 and 1"),
    ("lr_schedule: linear\n", "lr_schedule: 'linear' is not one of noam, cosine"),
    ("- batch_size\n", "expected a mapping of option names to values"),
    ("epochs: [\n", "not valid YAML"),
])
def test_bad_config_files_fail_naming_the_key(tmp_path, capsys, text, message):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(OptionError, match=re.escape(message)):
        _settings(["--data_dir", "d", "--config", str(path)])
    rc = main(["train", "--data_dir", "d", "--config", str(path), "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and message in err
    if "unknown key" in message:  # the valid keys are listed, seed 002's among them
        for key in ("batch_size", "max_samples", "train_split", "use_augmentation", "val_split"):
            assert key in err


def test_missing_data_dir_and_unknown_recipe_are_clear(capsys):
    assert main(["train", "--epochs", "1"]) == 2
    assert "no data: give --data_dir DIR (or data_dir in the --config file)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--recipe", "desktop", "--data_dir", "d"])
    assert "invalid choice: 'desktop'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Label order and --max-samples


def test_label_order_rule():
    assert order_labels({"neutral", "surprised", "angry", "sad", "happy"})[0] == list(BASIC5)
    assert order_labels(["fearful", "surprised", "sad", "neutral", "happy", "angry"])[0] == [
        "happy", "sad", "angry", "neutral", "fearful", "surprised"]  # app6 (nEMO's set)
    order, rule = order_labels(["sad", "calm", "happy", "angry", "neutral"])  # no taxonomy holds exactly these
    assert order == ["neutral", "calm", "happy", "sad", "angry"] and "canonical order" in rule
    assert order_labels(["frustrated", "happy", "excited"])[0] == ["happy", "excited", "frustrated"]
    rows = [argparse.Namespace(label=lab, speaker="s", path=f"{i}.wav") for i, lab in
            enumerate(["neutral", "disgust", "sad", "angry", "happy", "surprised"] * 2)]
    assert map_labels(rows, "disgust=angry")[1] == SEED000_ORDER  # merges leave basic5's set: its order
    assert map_labels(rows, "neutral,sad,angry,happy,surprised,disgust=angry")[1] == [
        "neutral", "sad", "angry", "happy", "surprised"]  # a list gives the order


def test_labels_csv_and_class_folders_with_a_taxonomy_set_get_its_order(five_label_corpus, tmp_path):
    assert map_labels(scan(five_label_corpus), None)[1] == SEED000_ORDER
    with open(five_label_corpus / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows[:10]:
        (tmp_path / "folders" / r["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(five_label_corpus / r["path"], tmp_path / "folders" / r["label"] / r["path"])
    folders = scan(tmp_path / "folders")
    assert {r.corpus for r in folders} == {"folders"} and map_labels(folders, None)[1] == SEED000_ORDER


def test_balanced_subset_spreads_over_labels_and_speakers():
    rows = [{"label": lab, "speaker": f"s{s}"} for lab, n in (("a", 30), ("b", 12), ("c", 3)) for s in range(3)
            for _ in range(n // 3)]
    idx = balanced_subset(rows, 18, seed=1)
    assert idx == sorted(idx) and len(set(idx)) == 18 and idx == balanced_subset(rows, 18, seed=1)
    picked = [rows[i] for i in idx]
    assert Counter(r["label"] for r in picked) == {"a": 8, "b": 7, "c": 3}  # c runs out, a and b share its turns
    assert Counter(r["speaker"] for r in picked if r["label"] == "a") == {"s0": 3, "s1": 3, "s2": 2}
    assert balanced_subset(rows, 18, seed=2) != idx and balanced_subset(rows, 100) == list(range(len(rows)))


def test_training_orders_labels_from_the_data_and_limits_clips(five_label_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "--data_dir", str(five_label_corpus), "--model", "cnn", "--model-option", "channels=[4,4,4]",
               "--model-option", "hidden=4", "--epochs", "1", "--batch_size", "8", "--max-samples", "20",
               "--threads", "1", "--no-cache", "--output_dir", str(out)])
    assert rc == 0
    said = capsys.readouterr().out
    assert "kept 20 of 30 clips" in said
    assert ("labels (output order, written to labels.json): happy, sad, angry, surprised, neutral; "
            "the basic5 taxonomy's order") in said
    assert json.loads((out / "labels.json").read_text()) == SEED000_ORDER
    metrics = json.loads((out / "metrics_overall.json").read_text())
    assert metrics["sizes"]["train"] + metrics["sizes"]["val"] == 20
    meta = json.loads((out / "model_meta.json").read_text())
    assert meta["label_order"].startswith("the basic5 taxonomy's order") and meta["train_config"]["max_samples"] == 20


# ---------------------------------------------------------------------------------------------
# --help


def test_train_help_shows_every_default_and_the_recipes():
    p = argparse.ArgumentParser(prog="emovox train")
    train_cmd.add_arguments(p)
    opts = p.get_default("_train_options")
    assert len(opts.table) > 40
    for dest, opt in opts.table.items():
        assert "(default: " in opt.action.help or opt.action.help.startswith("default: "), dest
    text = " ".join(p.format_help().split())
    assert "--epochs EPOCHS most epochs to train (default: 50)" in text
    assert "clips per optimiser step (default: 32)" in text
    for name in ("mobile seed 000", "backend seed 001", "hybrid seed 002", "streaming seed 003"):
        assert name in text
    assert "The defaults are seed 000's" not in text and "The defaults are emovox's own" in text


def test_seed000_command_without_recipe_says_what_recipe_mobile_adds(capsys):
    """Seed 000's command as written (no --recipe) trains emovox's default model: one line says what --recipe mobile
    adds (its cnn, the ONNX and Core ML files); with --recipe mobile the line is gone."""
    argv = ("train --data_dir data --csv_path data/labels.csv --epochs 50 --batch_size 32 --lr 0.001 --val_split 0.2 "
            "--n_mels 64 --time_steps 100 --sample_rate 16000 --use_augmentation --early_stopping_patience 5 "
            "--output_dir outputs").split()
    for recipe_flags, expected in (([], 1), (["--recipe", "mobile"], 0)):
        args = build_parser().parse_args([*argv, *recipe_flags])
        a, sources = train_cmd.settings(args)
        lines = []
        train_cmd._announce(a, sources, lines.append)
        notes = [line for line in lines if "--recipe mobile" in line]
        assert len(notes) == expected, lines
        if expected:
            assert "crnn" in notes[0] and "writes no ONNX or Core ML file" in notes[0]
            assert "emotion_classifier.onnx" in notes[0] and "EmotionClassifier.mlmodel" in notes[0]

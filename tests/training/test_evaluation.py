"""Metrics, calibration, plots, and evaluating a model on a corpus with other labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emovox.audio import load_audio
from emovox.cli import main
from emovox.data.corpora import scan
from emovox.features import FeatureStats, preset
from emovox.modelio import load_model_dir, make_config, save_model
from emovox.models import build_model
from emovox.training.evaluation import (
    compute_metrics,
    evaluate_model,
    expected_calibration_error,
    fit_temperature,
    nll_temperature,
    plot_confusion,
    softmax,
)

PNG = b"\x89PNG\r\n\x1a\n"



def test_metrics_by_hand():
    labels = ["a", "b", "c"]
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    m = compute_metrics(y_true, y_pred, labels)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["uar"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    f1 = {"a": 0.8, "b": 0.5, "c": 2 / 3}
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # a label absent from the ground truth is listed but not averaged
    m = compute_metrics([0, 1], [0, 2], ["a", "b", "c"])
    assert m["uar"] == pytest.approx(0.5) and m["per_class"]["c"]["support"] == 0


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    assert expected_calibration_error(probs, [0, 1]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)
    assert expected_calibration_error(np.array([[1.0, 0.0]] * 4), [0, 0, 0, 0]) == pytest.approx(0.0)


def test_temperature_fit_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(3000, 5))
    cdf = softmax(logits, 2.0).cumsum(axis=1)
    y = np.minimum((rng.random((3000, 1)) > cdf).sum(axis=1), 4)  # one draw per row from softmax(logits / 2)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(2.0, rel=0.1)
    before = expected_calibration_error(softmax(logits), y)
    after = expected_calibration_error(softmax(logits, t), y)
    assert after < before / 2


def test_temperature_never_raises_the_validation_ece():
    """Small validation sets: the NLL optimum is kept only where it does not make ECE worse (issue 14)."""
    rng = np.random.default_rng(1)
    guarded = 0
    for _ in range(60):  # small sets whose argmax is right 70 % of the time plus chance, at several scales
        n = int(rng.integers(8, 40))
        logits = rng.normal(0, rng.choice([0.2, 0.5, 1.0, 2.0]), size=(n, 4))
        y = np.where(rng.random(n) < 0.7, logits.argmax(1), rng.integers(0, 4, n))
        t = fit_temperature(logits, y)
        assert expected_calibration_error(softmax(logits, t), y) <= expected_calibration_error(softmax(logits), y)
        guarded += t == 1.0 and nll_temperature(logits, y) != 1.0
    assert guarded > 0  # the guard was needed in some of these draws


def test_plot_confusion_and_its_command(tmp_path, capsys):
    cm = np.array([[5, 1], [2, 7]])
    out = plot_confusion(cm, ["sad", "happy"], tmp_path / "a.png", "row")
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="2x2 but 3 labels"):
        plot_confusion(cm, ["a", "b", "c"], tmp_path / "b.png")
    np.save(tmp_path / "cm.npy", cm)
    (tmp_path / "labels.json").write_text(json.dumps(["sad", "happy"]))
    for norm in ("none", "row"):
        rc = main(["plot-confusion", "--input", str(tmp_path / "cm.npy"), "--labels", str(tmp_path / "labels.json"),
                   "--output", str(tmp_path / f"cm_{norm}.png"), "--normalize", norm])
        assert rc == 0 and (tmp_path / f"cm_{norm}.png").read_bytes()[:8] == PNG
    (tmp_path / "bad.json").write_text('{"a": 1}')
    rc = main(["plot-confusion", "--input", str(tmp_path / "cm.npy"), "--labels", str(tmp_path / "bad.json"),
               "--output", str(tmp_path / "x.png")])
    assert rc == 2 and "expected a JSON list of label strings" in capsys.readouterr().err


@pytest.fixture(scope="module")
def calm_corpus(tmp_path_factory):
    """RAVDESS-like labels (calm, happy, sad, angry) for a model that has neutral and fearful but no calm/angry."""
    from emovox.data.synth import make_synthetic_corpus

    return make_synthetic_corpus(tmp_path_factory.mktemp("calm"), labels=("calm", "happy", "sad", "angry"),
                                 n_speakers=2, clips_per_label_per_speaker=2, duration_s=0.6)


def _model_dir(path, labels, *, favour=None, features=None):
    torch.manual_seed(0)
    feats = features or preset("logmel64")
    model = build_model("cnn", n_features=feats.n_features, n_classes=len(labels), channels=(8, 8, 8), hidden=8).eval()
    if favour is not None:
        with torch.no_grad():
            model.head[-1].bias[labels.index(favour)] = 100.0  # argmax over all labels would always pick it
    stats = FeatureStats(mean=[-40.0] * feats.n_features, std=[20.0] * feats.n_features)
    config = make_config(model_name="cnn", model_kwargs=model.kwargs, features=feats, labels=labels, stats=stats,
                         temperature=1.5)
    save_model(path, model, config)
    return path


def test_evaluate_maps_labels_drops_unexpressible_and_restricts_the_argmax(calm_corpus, tmp_path):
    labels = ["neutral", "happy", "sad", "fearful"]
    loaded = load_model_dir(_model_dir(tmp_path / "m", labels, favour="fearful"))
    rows = scan(calm_corpus, with_duration=False)
    ev = evaluate_model(loaded, rows, tmp_path / "eval", cache=tmp_path / "cache")
    assert ev.labels == ["neutral", "happy", "sad"]  # fearful is not in the corpus: never predicted
    assert ev.dropped == {"angry": 4} and ev.metrics["n_dropped"] == 4 and ev.metrics["n"] == 12
    assert ev.metrics["label_mapping"] == {"angry": None, "calm": "neutral", "happy": "happy", "sad": "sad"}
    assert ev.logits.shape == (12, 4) and (ev.logits.argmax(1) == 3).all()  # unrestricted: always fearful
    assert set(ev.y_pred.tolist()) <= {0, 1, 2}
    assert np.array_equal(ev.y_true, [{"calm": 0, "happy": 1, "sad": 2}[r.label] for r in ev.rows])
    # seed 004's names (confusion_matrix.png kept for emovox's earlier readers)
    for name in ("metrics_overall.json", "metrics_report.csv", "confusion_matrix.npy", "confusion_matrix_counts.png",
                 "confusion_matrix.png", "confusion_matrix_rownorm.png", "labels.json", "model_meta.json"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert json.loads((tmp_path / "eval" / "labels.json").read_text()) == ["neutral", "happy", "sad"]
    assert np.load(tmp_path / "eval" / "confusion_matrix.npy").sum() == 12
    counts = (tmp_path / "eval" / "confusion_matrix_counts.png").read_bytes()
    assert counts[:8] == b"\x89PNG\r\n\x1a\n" and counts == (tmp_path / "eval" / "confusion_matrix.png").read_bytes()
    meta = json.loads((tmp_path / "eval" / "model_meta.json").read_text())
    assert meta["model_name"] == "m" and meta["architecture"] == "cnn" and meta["classes"] == ["neutral", "happy", "sad"]
    assert meta["dataset"]["n_clips"] == 12 and meta["dataset"]["n_dropped"] == 4 and meta["date"]


def test_evaluate_command_says_how_many_clips_were_left_out(calm_corpus, tmp_path, capsys):
    model = _model_dir(tmp_path / "m", ["neutral", "happy", "sad"])
    rc = main(["evaluate", "--model", str(model), str(calm_corpus), "--output-dir", str(tmp_path / "out"),
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "left out 4 clip(s) whose label the model cannot express: angry 4" in out
    assert "12 clips, labels scored: neutral, happy, sad" in out
    metrics = json.loads((tmp_path / "out" / "metrics_overall.json").read_text())
    assert metrics["dropped_unexpressible"] == {"angry": 4} and metrics["temperature"] == 1.5
    rc = main(["evaluate", "--model", str(tmp_path / "nope"), str(calm_corpus), "--output-dir", str(tmp_path / "o")])
    assert rc == 2 and "neither a folder nor a shipped model" in capsys.readouterr().err
    # a shipped model by name, as classify takes it
    rc = main(["evaluate", "--model", "crnn", str(calm_corpus), "--output-dir", str(tmp_path / "shipped"),
               "--no-cache"])
    assert rc == 0 and json.loads((tmp_path / "shipped" / "metrics_overall.json").read_text())["n"] == 16


@pytest.mark.parametrize("features", ["logmel64", "seed000", "seed003"])
def test_evaluation_from_cached_features_equals_the_pipeline(calm_corpus, tmp_path, features):
    """evaluate_model's batched, cached path gives the logits of the model's own waveform pipeline."""
    feats = preset(features)
    name = "lstm" if feats.kind == "mfcc" else "cnn"
    labels = ["neutral", "happy", "sad", "angry"]
    torch.manual_seed(0)
    kwargs = {"hidden_size": 8} if name == "lstm" else {"channels": (8, 8, 8), "hidden": 8}
    model = build_model(name, n_features=feats.n_features, n_classes=4, **kwargs).eval()
    stats = FeatureStats(mean=[-30.0] * feats.n_features, std=[15.0] * feats.n_features)
    save_model(tmp_path, model, make_config(model_name=name, model_kwargs=model.kwargs, features=feats, labels=labels,
                                            stats=stats))
    loaded = load_model_dir(tmp_path)
    rows = scan(calm_corpus, with_duration=False)[::3]
    ev = evaluate_model(loaded, rows, cache=None, batch_size=3)
    with torch.no_grad():
        want = np.concatenate([loaded.pipeline(torch.from_numpy(load_audio(r.path))[None]).numpy() for r in ev.rows])
    np.testing.assert_allclose(ev.logits, want, atol=2e-3, rtol=1e-3)

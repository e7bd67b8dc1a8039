"""Trainer: artifacts, resume, determinism, feature cache, label mapping, clear errors (synthetic data)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

import emovox.data.cache
from emovox.cli import main
from emovox.data.cache import (
    AugmentConfig,
    BatchMaker,
    FeatureCache,
    compute_logmel,
    config_hash,
    load_features,
)
from emovox.data.corpora import scan
from emovox.features import preset
from emovox.training.config import TrainConfig
from emovox.training.loop import lr_at
from emovox.training.plan import map_labels, plan_splits
from emovox.training.run import train_model

ARTIFACTS = ["best_model.pth", "model_config.json", "labels.json", "model_meta.json", "training_history.json",
             "metrics_overall.json", "metrics_report.csv", "confusion_matrix.npy", "confusion_matrix.png",
             "confusion_matrix_rownorm.png", "training_curves.png", "checkpoint.pt"]
TINY_CNN = {"channels": [16, 16, 16], "hidden": 16}



@pytest.fixture(scope="module")
def trained(synth_corpus, tmp_path_factory):
    """One CLI training run (seed 000's flags plus emovox's), shared by the artifact tests."""
    out = tmp_path_factory.mktemp("train") / "out"
    cache = tmp_path_factory.mktemp("cache")
    rc = main(["train", "--data_dir", str(synth_corpus), "--model", "cnn", "--epochs", "2", "--batch_size", "16",
               "--lr", "0.003", "--val_split", "0.25", "--n_mels", "40", "--sample_rate", "16000",
               "--use_augmentation", "--mixup", "0.2", "--early_stopping_patience", "3", "--seed", "1",
               "--save-full-model", "--cache-dir", str(cache), "--output_dir", str(out)])
    assert rc == 0
    return out, cache


def test_training_writes_every_artifact(trained):
    out, _ = trained
    for name in ARTIFACTS + ["model_full.pth"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    payload = torch.load(out / "best_model.pth", weights_only=True)
    assert payload["config"]["labels"] == ["neutral", "happy", "sad", "angry"]
    assert payload["config"]["features"]["n_mels"] == 40
    assert payload["config"]["temperature"] > 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 2 and len(ck["history"]) == 2 and "optimizer_state" in ck and "torch" in ck["rng"]
    history = json.loads((out / "training_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "val_uar", "val_accuracy", "val_macro_f1", "lr"} <= set(history[0])
    metrics = json.loads((out / "metrics_overall.json").read_text())
    for key in ("accuracy", "uar", "macro_f1", "weighted_f1", "ece", "ece_calibrated", "temperature", "sizes", "split"):
        assert key in metrics, key
    assert metrics["split"] == "val" and metrics["split_kind"] == "speaker"
    assert metrics["sizes"]["val"] == 20 and metrics["sizes"]["train"] == 60
    meta = json.loads((out / "model_meta.json").read_text())
    for key in ("data_dirs", "corpora", "split", "seed", "date", "emovox_version", "parameters", "size_bytes",
                "training_time_s"):
        assert key in meta, key
    assert meta["seed"] == 1 and meta["size_bytes"] == (out / "best_model.pth").stat().st_size
    assert meta["split"]["val_speakers"]
    rows = list(csv.reader((out / "metrics_report.csv").open()))
    assert rows[0] == ["label", "precision", "recall", "f1", "support"] and len(rows) == 1 + 4 + 3
    cm = np.load(out / "confusion_matrix.npy")
    assert cm.shape == (4, 4) and cm.sum() == 20
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "labels.json").read_text()) == payload["config"]["labels"]


def test_full_model_pickle_takes_raw_features(trained, synth_corpus):
    from emovox.modelio import load_model_dir

    out, _ = trained
    full = torch.load(out / "model_full.pth", weights_only=False)  # a pickle: trusted source only
    loaded = load_model_dir(out)
    wave = torch.from_numpy(emovox.audio.load_audio(sorted(synth_corpus.glob("*.wav"))[0]))[None]
    with torch.no_grad():
        feats, lengths = loaded.pipeline.raw_features(wave)
        want = loaded.pipeline(wave) / loaded.pipeline.temperature
        torch.testing.assert_close(full(feats, lengths), want, atol=1e-5, rtol=1e-5)


def test_full_streaming_model_steps_frame_by_frame_on_raw_mfcc(tmp_path):
    """Seed 003's backend: torch.load(model) then model(frame (1, 1, 13), hidden) -> (logits, hidden)."""
    from emovox.features import FeatureStats
    from emovox.models import build_model
    from emovox.training.full_model import FullStreamingModel

    torch.manual_seed(0)
    model = build_model("lstm", n_features=13, n_classes=4, hidden_size=8).eval()
    stats = FeatureStats(mean=np.linspace(-300, 10, 13).tolist(), std=np.linspace(60, 5, 13).tolist())
    torch.save(FullStreamingModel(model, stats, preset("seed003"), 2.0, ["a", "b", "c", "d"]).eval(), tmp_path / "model_full.pth")
    full = torch.load(tmp_path / "model_full.pth", weights_only=False)  # a pickle: trusted source only
    raw = torch.tensor(stats.mean)[None, None, :] + torch.randn(1, 30, 13) * torch.tensor(stats.std)
    with torch.no_grad():
        whole, _ = full(raw)
        hidden = None
        for t in range(raw.shape[1]):
            step, hidden = full(raw[:, t : t + 1], hidden)
        normalised = (raw - torch.tensor(stats.mean)) / torch.tensor(stats.std)
        want = model(normalised)[0] / 2.0
    torch.testing.assert_close(step, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(whole, want, atol=1e-6, rtol=1e-5)
    assert full.labels == ["a", "b", "c", "d"]


@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file that looks like a TorchScript archive")
@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:'(aifc|audioop|sunau)' is deprecated:DeprecationWarning")  # librosa.load's audioread
def test_save_full_model_runs_seed003_loop_literally(synth_corpus, tmp_path, capsys, seed003_loop):
    """Seed 003's backend, as written, on `emovox train --model lstm --features framewise-librosa-mfcc13
    --save-full-model`: its own librosa features, torch.load(model.pth), then frame by frame from
    hidden=None. It gets emovox's answer; so do model_torchscript.pt (no emovox, no pickle) and
    model_weights.pth (a state dict)."""
    import librosa

    from emovox.inference import load_model
    from emovox.training.full_model import FullStreamingModel

    out = tmp_path / "out"
    rc = main(["train", "--data_dir", str(synth_corpus), "--model", "lstm", "--features", "framewise-librosa-mfcc13",
               "--model-option", "hidden_size=16", "--epochs", "3", "--lr", "0.02", "--batch_size", "16",
               "--save-full-model", "--cache-dir", str(tmp_path / "cache"), "--output_dir", str(out)])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "model_meta.json").read_text())
    assert (meta["full_model"], meta["full_model_weights"], meta["full_model_torchscript"]) == (
        "model.pth", "model_weights.pth", "model_torchscript.pt")
    assert "weights_only=False" in meta["full_model_warning"] and not (out / "model_full.pth").exists()
    clip = sorted(synth_corpus.glob("*.wav"))[-1]
    want = np.array(list(load_model(out).predict(clip).scores.values()))
    assert want.max() - want.min() > 0.05  # an answer worth comparing

    # --- seed 003's model_inference.py, literally (its features: the librosa loop)
    audio, sr = librosa.load(clip, sr=16000)
    mfcc_features = seed003_loop(audio, sr)
    input_tensor = torch.tensor(mfcc_features, dtype=torch.float32).unsqueeze(0)
    total_frames = input_tensor.shape[1]
    for model_path in (out / "model.pth", out / "model_torchscript.pt"):
        model = torch.load(model_path, weights_only=False)
        model.eval()
        hidden = None
        for i in range(total_frames):
            frame = input_tensor[:, i:i+1, :]  # (1, 1, 13)
            output, hidden = model(frame, hidden)  # output: (1, num_classes)
            probabilities = torch.softmax(output, dim=1)
        # ---
        np.testing.assert_allclose(probabilities.detach().numpy()[0], want, atol=1e-4, err_msg=model_path.name)
        assert isinstance(hidden, tuple) and hidden[0].shape == (2, 1, 16)

    weights = torch.load(out / "model_weights.pth", weights_only=True)
    full = torch.load(out / "model.pth", weights_only=False)
    assert isinstance(full, FullStreamingModel)  # model_weights.pth: the plan's EmotionLSTM, statistics folded in
    assert weights.keys() == full.model.state_dict().keys() == {k for k in weights if k.split(".")[0] in ("lstm", "fc")}
    with pytest.raises(Exception, match="weights_only"):  # torch >= 2.6 refuses the pickle by default
        torch.load(out / "model.pth")


def test_feature_cache_is_hit_on_second_pass(synth_corpus, tmp_path, monkeypatch):
    calls = []
    real = emovox.data.cache.load_audio
    monkeypatch.setattr(emovox.data.cache, "load_audio", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    rows = scan(synth_corpus, with_duration=False)[:12]
    cfg = preset("logmel64")
    first = load_features(rows, cfg, cache=tmp_path, num_workers=2)
    assert len(calls) == 12 and first.decoded == 12
    cache = FeatureCache(tmp_path, cfg)
    second = load_features(rows, cfg, cache=cache)
    assert len(calls) == 12 and second.decoded == 0 and cache.hits == 12
    for a, b in zip(first.features, second.features):
        np.testing.assert_array_equal(a, b)
    # another front-end has its own key; entries follow a clip's content, not its path or timestamps
    assert config_hash(preset("mfcc13")) != config_hash(cfg) == config_hash(cfg.replace(num_frames=100))
    # speech-level normalisation is applied after the cache: the same cached frames serve both
    assert config_hash(preset("logmel128l")) == config_hash(preset("logmel128"))
    load_features(rows[:1], preset("mfcc13"), cache=tmp_path)
    assert len(calls) == 13
    import dataclasses
    import os
    import shutil

    copy = shutil.copy(rows[0].path, tmp_path / "copied.wav")
    st = os.stat(copy)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**12))
    load_features([dataclasses.replace(rows[0], path=str(copy))], cfg, cache=tmp_path)
    assert len(calls) == 13  # a moved, re-timestamped copy of a clip hits
    with open(copy, "r+b") as fh:  # an edited clip misses
        fh.seek(-2, os.SEEK_END)
        fh.write(b"\x01\x02")
    load_features([dataclasses.replace(rows[0], path=str(copy))], cfg, cache=tmp_path)
    assert calls[-1] == str(copy) and len(calls) == 14


def test_training_epochs_read_the_cache_not_the_audio(synth_corpus, tmp_path, monkeypatch):
    calls = []
    real = emovox.data.cache.load_audio
    monkeypatch.setattr(emovox.data.cache, "load_audio", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows, labels, _, _ = map_labels(scan(synth_corpus, with_duration=False), None)
    cfg = TrainConfig(model="cnn", model_kwargs=TINY_CNN, epochs=2, batch_size=16, seed=0)
    plan = plan_splits(rows, cfg)[0]
    train_model(plan, labels, cfg, tmp_path / "a", cache=tmp_path / "cache", plots=False)
    assert len(calls) == len(rows)  # each clip decoded once, for both epochs and the final evaluation
    train_model(plan, labels, cfg, tmp_path / "b", cache=tmp_path / "cache", plots=False)
    assert len(calls) == len(rows)  # second run: all from the cache


def test_resume_continues_and_matches_a_straight_run(synth_corpus, tmp_path):
    rows, labels, _, _ = map_labels(scan(synth_corpus, with_duration=False), None)
    base = dict(model="cnn", model_kwargs=TINY_CNN, batch_size=16, lr=3e-3, seed=3, augment=True, mixup_alpha=0.2,
                early_stopping_patience=None)
    plan = plan_splits(rows, TrainConfig(**base))[0]
    cache = tmp_path / "cache"
    straight = train_model(plan, labels, TrainConfig(epochs=4, **base), tmp_path / "straight", cache=cache, plots=False)
    train_model(plan, labels, TrainConfig(epochs=2, **base), tmp_path / "resumed", cache=cache, plots=False)
    resumed = train_model(plan, labels, TrainConfig(epochs=4, **base), tmp_path / "resumed", cache=cache, resume=True,
                          plots=False)
    assert len(resumed.history) == 4 and [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(straight.history, resumed.history):
        for key in ("train_loss", "val_loss", "val_uar", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a, b)
    assert resumed.metrics["uar"] == pytest.approx(straight.metrics["uar"])
    # a checkpoint of another configuration is refused with a clear message
    with pytest.raises(ValueError, match="checkpoint was made with other data, labels, model or features"):
        train_model(plan, labels, TrainConfig(epochs=5, **{**base, "model_kwargs": {}}), tmp_path / "resumed",
                    cache=cache, resume=True, plots=False)
    # a checkpoint written before FeatureConfig gained fields (here: the level_* ones) still resumes
    ck_path = tmp_path / "resumed" / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    ck["data"]["features"] = {k: v for k, v in ck["data"]["features"].items() if not k.startswith("level")}
    torch.save(ck, ck_path)
    older = train_model(plan, labels, TrainConfig(epochs=5, **base), tmp_path / "resumed", cache=cache, resume=True,
                        plots=False)
    assert [h["epoch"] for h in older.history] == [1, 2, 3, 4, 5]


def test_lr_schedules():
    noam = [lr_at(s, base_lr=1.0, warmup_steps=4, total_steps=100, kind="noam") for s in range(100)]
    assert noam[:4] == [0.25, 0.5, 0.75, 1.0] and noam[15] == pytest.approx(0.5)
    cos = [lr_at(s, base_lr=1.0, warmup_steps=4, total_steps=100, kind="cosine") for s in range(100)]
    assert cos[3] == 1.0 and cos[-1] == pytest.approx(0.01) and all(a >= b for a, b in zip(cos[3:], cos[4:]))


def test_label_mapping_drops_and_counts(synth_corpus, tmp_path, capsys):
    rows = scan(synth_corpus, with_duration=False)
    kept, labels, dropped, mapping = map_labels(rows, "neutral,happy,sad")
    assert labels == ["neutral", "happy", "sad"] and dropped == {"angry": 20} and len(kept) == 60
    kept, labels, dropped, _ = map_labels(rows, "angry=sad")
    assert labels == ["neutral", "happy", "sad"] and not dropped and sum(r.label == "sad" for r in kept) == 40
    kept, labels, dropped, _ = map_labels(rows, "basic5")
    assert labels == ["happy", "sad", "angry", "neutral"]  # basic5's order, labels absent from the data left out
    kept, labels, dropped, _ = map_labels(rows, "sad,happy,neutral,angry=sad")  # a list with merges: its order
    assert labels == ["sad", "happy", "neutral"] and not dropped and sum(r.label == "sad" for r in kept) == 40
    rc = main(["train", "--data_dir", str(synth_corpus), "--labels", "neutral,happy,sad", "--model", "cnn",
               "--epochs", "1", "--cache-dir", str(tmp_path / "c"), "--output_dir", str(tmp_path / "o")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "left out 20 clip(s) whose label the target labels cannot express: angry 20" in out
    meta = json.loads((tmp_path / "o" / "model_meta.json").read_text())
    assert meta["dropped_labels"] == {"angry": 20}


def test_malformed_label_spec_stops_training_with_the_accepted_forms(synth_corpus, tmp_path, capsys):
    rc = main(["train", "--data_dir", str(synth_corpus), "--labels", "happy,sad,disgust=", "--output_dir",
               str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "--labels: label spec 'happy,sad,disgust=': 'disgust=' is not a merge" in err
    assert "a list with merges" in err and not (tmp_path / "o").exists()


def test_splits_by_speaker_folds_and_test_speakers(synth_corpus):
    rows, _, _, _ = map_labels(scan(synth_corpus, with_duration=False), None)
    plans = plan_splits(rows, TrainConfig(folds=4))
    assert len(plans) == 4 and [p.name for p in plans] == ["fold_1", "fold_2", "fold_3", "fold_4"]
    for p in plans:
        spk = lambda part: {r.speaker for r in part}  # noqa: E731
        assert not spk(p.train) & spk(p.test) and not spk(p.val) & spk(p.test) and not spk(p.train) & spk(p.val)
        assert p.kind == "speaker" and len(p.test) == 20
    (plan,) = plan_splits(rows, TrainConfig(test_speakers=["spk01"]))
    assert plan.test_speakers == ["csv_spk01"] and {r.speaker for r in plan.test} == {"csv_spk01"}
    (plan,) = plan_splits(rows, TrainConfig(split="stratified"))
    assert plan.kind == "stratified" and "not speaker-independent" in plan.message


def test_bad_data_dir_fails_with_a_clear_message(tmp_path, capsys):
    rc = main(["train", "--data_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")])
    assert rc == 2
    assert f"emovox train: error: '{tmp_path / 'missing'}': no such folder" in capsys.readouterr().err


def test_csv_with_unknown_label_fails_with_a_clear_message(synth_corpus, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    wav = sorted(synth_corpus.glob("*.wav"))[0]
    shutil.copy(wav, data / "a.wav")
    (data / "labels.csv").write_text("path,label\na.wav,happy\na2.wav,sleepy\n")
    shutil.copy(wav, data / "a2.wav")
    for extra in ([], ["--csv_path", str(data / "labels.csv")]):
        rc = main(["train", "--data_dir", str(data), *extra, "--output_dir", str(tmp_path / "o")])
        assert rc == 2
        err = capsys.readouterr().err
        assert "labels.csv' line 3: unknown emotion label 'sleepy'; accepted:" in err


def test_cached_features_give_the_pipeline_features(synth_corpus):
    """What training sees (cached float16 log-mel → model features) is what the pipeline computes."""
    wave = emovox.audio.load_audio(sorted(synth_corpus.glob("*.wav"))[3])
    for name in ("logmel64", "seed003", "seed000"):
        cfg = preset(name)
        from emovox.features import build_frontend
        from emovox.frames import featurize, fix_frames

        want = featurize(wave, cfg, build_frontend(cfg))[0]
        if cfg.num_frames:
            want = fix_frames(want, cfg.num_frames, cfg=cfg)
        got = BatchMaker(cfg, None).eval_item(compute_logmel(wave, cfg))
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=0.1 if cfg.kind == "mfcc" else 0.02, rtol=1e-3)


def test_training_features_with_level_normalisation_equal_the_pipeline_and_ignore_gain(synth_corpus):
    from emovox.modelio import EmotionPipeline, make_config
    from emovox.models import build_model

    cfg = preset("logmel128l")
    wave = emovox.audio.load_audio(sorted(synth_corpus.glob("*.wav"))[3])
    pipe = EmotionPipeline(build_model("crnn", n_features=cfg.n_features, n_classes=4),
                           make_config(model_name="crnn", model_kwargs={}, features=cfg, labels=list("abcd"), stats=None))
    with torch.no_grad():
        want = pipe.features(torch.from_numpy(wave)[None])[0][0]
    maker = BatchMaker(cfg, None)
    torch.testing.assert_close(maker.eval_item(compute_logmel(wave, cfg)), want, atol=0.02, rtol=1e-3)
    torch.testing.assert_close(maker.eval_item(compute_logmel(wave * 0.05, cfg)), want, atol=0.02, rtol=1e-3)
    # training crops: the same crop of a quieter copy gives the same features (gain cancels)
    a = maker.train_item(compute_logmel(wave, cfg), np.random.default_rng(0))
    b = maker.train_item(compute_logmel(wave * 0.05, cfg), np.random.default_rng(0))
    torch.testing.assert_close(a, b, atol=0.02, rtol=1e-3)


def test_augmentation_keeps_shapes_and_changes_values(synth_corpus):
    wave = emovox.audio.load_audio(sorted(synth_corpus.glob("*.wav"))[0])
    cfg = preset("logmel64")
    lm = compute_logmel(wave, cfg)
    plain = BatchMaker(cfg, None, crop_frames=50)
    aug = BatchMaker(cfg, None, crop_frames=50, augment=AugmentConfig(noise_prob=1.0, speed_prob=1.0))
    rng = np.random.default_rng(0)
    a = plain.train_item(lm, rng)
    b = aug.train_item(lm, rng)
    assert a.shape == b.shape == (64, 50)
    assert not torch.allclose(a, b)
    short = BatchMaker(cfg, None, crop_frames=500, augment=AugmentConfig())
    feats, lengths = short.train_batch([lm, lm[:, :40]], rng)
    assert feats.shape[0] == 2 and lengths is not None and int(lengths.max()) == feats.shape[-1]
    fixed = BatchMaker(preset("seed000"), None, augment=AugmentConfig())
    feats, lengths = fixed.train_batch([compute_logmel(wave, preset("seed000"))] * 2, rng)
    assert feats.shape == (2, 64, 100) and lengths is None


def test_frame_objective_ignores_padding_and_reads_the_last_real_frame():
    from emovox.models import build_model
    from emovox.training.loop import _frame_objective

    torch.manual_seed(0)
    model = build_model("lstm", n_features=13, n_classes=4, hidden_size=8, num_layers=2).eval()
    short, long = torch.randn(1, 30, 13), torch.randn(1, 50, 13)
    batch = torch.cat([torch.nn.functional.pad(short, (0, 0, 0, 20)), long])
    lengths = torch.tensor([30, 50])
    target = torch.tensor([2, 1])
    with torch.no_grad():
        last, per_clip = _frame_objective(model.frame_logits(batch), target, lengths, skip=10)
        alone_last, alone = _frame_objective(model.frame_logits(short), target[:1], None, skip=10)
        # the per-frame model's last frame is the streaming answer: padded_logits reads the same frame
        assert torch.allclose(last, model.padded_logits(batch, lengths), atol=1e-6)
    assert torch.allclose(last[0], alone_last[0], atol=1e-6)
    assert float(per_clip[0]) == pytest.approx(float(alone[0]), abs=1e-6)
    with torch.no_grad():
        # frames 10..29 of the short clip, by hand
        ce = torch.nn.functional.cross_entropy(model.frame_logits(short)[0, 10:], torch.full((20,), 2))
        # a clip shorter than the skip is scored on its last frame only
        _, tiny = _frame_objective(model.frame_logits(short[:, :5]), target[:1], None, skip=10)
        ce_last = torch.nn.functional.cross_entropy(model.frame_logits(short[:, :5])[:, -1], target[:1])
    assert float(per_clip[0]) == pytest.approx(float(ce), abs=1e-5)
    assert float(tiny[0]) == pytest.approx(float(ce_last), abs=1e-6)


@pytest.mark.parametrize("objective", ["frames", "last"])
def test_streaming_objectives_train_and_lower_the_loss(objective, synth_corpus, tmp_path):
    rows, labels, _, _ = map_labels(scan(synth_corpus, with_duration=False), None)
    cfg = TrainConfig(model="lstm", model_kwargs={"hidden_size": 16, "num_layers": 1}, epochs=3, batch_size=16,
                      lr=5e-3, seed=0, early_stopping_patience=None, streaming_loss=objective)
    plan = plan_splits(rows, cfg)[0]
    res = train_model(plan, labels, cfg, tmp_path / objective, cache=tmp_path / "cache", plots=False)
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0], losses
    assert json.loads((tmp_path / objective / "model_meta.json").read_text())


def test_streaming_loss_is_checked():
    with pytest.raises(ValueError, match="streaming_loss must be frames or last"):
        TrainConfig(streaming_loss="middle").validate()


def _rows_of_two_corpora():
    from emovox.data.corpora import ManifestRow

    def row(i, label, corpus):
        return ManifestRow(path=f"/x/{i}.wav", label=label, speaker=None, corpus=corpus, duration_s=None)

    return [row(0, "neutral", "crema-d"), row(1, "angry", "crema-d"), row(2, "sad", "nemo"),
            row(3, "neutral", "nemo"), row(4, "surprised", "nemo"), row(5, "angry", "csv"), row(6, "sad", None)]


def test_corpus_label_mask_masks_the_labels_a_corpus_lacks():
    from emovox.cli import build_parser
    from emovox.training.plan import corpus_label_gaps, corpus_label_mask, label_scope_message

    rows = _rows_of_two_corpora()
    labels = ["neutral", "calm", "sad", "angry", "surprised"]  # calm: no training clip at all, masked nowhere
    inf = float("-inf")
    want = torch.tensor([
        [0, 0, inf, 0, inf],  # crema-d: neutral, angry
        [0, 0, inf, 0, inf],
        [0, 0, 0, inf, 0],  # nemo: sad, neutral, surprised
        [0, 0, 0, inf, 0],
        [0, 0, 0, inf, 0],
        [inf, 0, 0, 0, inf],  # "csv" and no corpus are one group: angry, sad
        [inf, 0, 0, 0, inf],
    ])
    mask = corpus_label_mask(rows, labels)
    assert mask.shape == (7, 5) and mask.dtype == torch.float32
    assert torch.equal(mask, want)
    assert corpus_label_gaps(rows, labels) == {"crema-d": ["sad", "surprised"], "nemo": ["angry"],
                                               "csv": ["neutral", "surprised"]}
    assert label_scope_message(rows, labels) == ("label scope corpus: crema-d lacks sad, surprised; "
                                                 "csv lacks neutral, surprised; nemo lacks angry")
    # one corpus: nothing is masked, and the log line says so
    one = [r for r in rows if r.corpus == "nemo"]
    assert torch.equal(corpus_label_mask(one, labels), torch.zeros(3, 5))
    assert label_scope_message(one, labels) == "label scope corpus: every corpus (nemo) has every label; the loss is unchanged"
    # the option: checked, and on the command line with TrainConfig's default
    with pytest.raises(ValueError, match="label_scope must be all or corpus, got 'speaker'"):
        TrainConfig(label_scope="speaker").validate()
    assert TrainConfig().label_scope == "all"
    from emovox.commands.train import settings

    assert settings(build_parser().parse_args(["train", "--data_dir", "d"]))[0].label_scope == "all"
    assert settings(build_parser().parse_args(["train", "--data_dir", "d", "--label-scope", "corpus"]))[0].label_scope \
        == "corpus"


def test_corpus_label_scope_gives_absent_labels_no_gradient():
    import emovox.training.distributed as ddp
    from emovox.training.loop import _frame_objective
    from emovox.training.plan import corpus_label_mask

    rows = _rows_of_two_corpora()[:5]
    labels = ["neutral", "sad", "angry", "surprised"]
    mask = corpus_label_mask(rows, labels)  # crema-d lacks sad, surprised; nemo lacks angry
    target = torch.tensor([labels.index(r.label) for r in rows])
    torch.manual_seed(0)
    logits = torch.randn(5, 4, requires_grad=True)
    ddp.global_mean_cross_entropy(logits + mask, target, target, weight=torch.tensor([1.0, 2.0, 0.5, 1.5])).backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    assert (grad[:2, 1] == 0).all() and (grad[:2, 3] == 0).all() and (grad[2:, 2] == 0).all()  # exactly zero
    assert (grad[:2, [0, 2]] != 0).all() and (grad[2:, [0, 1, 3]] != 0).all()
    # the loss is the cross-entropy over the corpus's own labels
    with torch.no_grad():
        alone = -torch.log_softmax(logits[0, [0, 2]], 0)[0]
        loss0 = torch.nn.functional.cross_entropy(logits[:1] + mask[:1], target[:1])
    assert float(loss0) == pytest.approx(float(alone), abs=1e-6)
    # mixup: a crema-d clip mixed with a nemo clip is scored over both corpora's labels
    union = torch.maximum(mask[0], mask[4])
    assert torch.equal(union, torch.zeros(4))
    # streaming frame objective: the mask is added to every frame, only in the loss
    frames = torch.randn(5, 12, 4, requires_grad=True)
    lengths = torch.tensor([12, 7, 12, 3, 9])
    last, per_clip = _frame_objective(frames, target, lengths, skip=2, scope=mask)
    per_clip.sum().backward()
    assert torch.isfinite(per_clip).all() and torch.isfinite(last).all()
    assert (frames.grad[:2, :, [1, 3]] == 0).all() and (frames.grad[2:, :, 2] == 0).all()
    assert (frames.grad[0, 2:, 0] != 0).all()
    plain_last, plain = _frame_objective(frames, target, lengths, skip=2)
    assert torch.equal(last, plain_last)  # returned logits (accuracy) are not masked
    assert (per_clip <= plain + 1e-6).all() and not torch.allclose(per_clip, plain)


def test_training_with_corpus_label_scope(synth_corpus, tmp_path):
    from dataclasses import replace

    rows = scan(synth_corpus, with_duration=False)
    speakers = sorted({r.speaker for r in rows})
    # two 'corpora': the first two speakers' clips, without angry, and the other two's
    rows = [replace(r, corpus="a") if r.speaker in speakers[:2] else replace(r, corpus="b") for r in rows]
    rows = [r for r in rows if not (r.corpus == "a" and r.label == "angry")]
    rows, labels, _, _ = map_labels(rows, None)
    cfg = TrainConfig(model="cnn", model_kwargs=TINY_CNN, epochs=2, batch_size=16, seed=0, mixup_alpha=0.2,
                      label_scope="corpus", early_stopping_patience=None)
    plan = plan_splits(rows, cfg)[0]
    said = []
    res = train_model(plan, labels, cfg, tmp_path / "out", cache=tmp_path / "cache", plots=False, echo=said.append)
    assert {r.corpus for r in plan.train} == {"a", "b"}
    assert said.count("label scope corpus: a lacks angry") == 1
    assert len(res.history) == 2 and all(np.isfinite(h["train_loss"]) for h in res.history)
    assert json.loads((tmp_path / "out" / "model_config.json").read_text())["training"]["label_scope"] == "corpus"
    assert json.loads((tmp_path / "out" / "model_meta.json").read_text())["train_config"]["label_scope"] == "corpus"
    ck = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert ck["train_config"]["label_scope"] == "corpus" and ck["data"]["label_scope"] == "corpus"
    assert TrainConfig.from_dict(ck["train_config"]).label_scope == "corpus"
    # another label scope does not resume this checkpoint
    with pytest.raises(ValueError, match="trained with label scope 'corpus', this run asks for 'all'"):
        train_model(plan, labels, replace(cfg, label_scope="all", epochs=3), tmp_path / "out", cache=tmp_path / "cache",
                    resume=True, plots=False)


def test_corrupted_or_truncated_cache_entries_are_detected_and_recomputed(synth_corpus, tmp_path, monkeypatch):
    calls = []
    real = emovox.data.cache.load_audio
    monkeypatch.setattr(emovox.data.cache, "load_audio", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    rows, _, _, _ = map_labels(scan(synth_corpus, with_duration=False), None)
    rows, cfg = rows[:3], preset("logmel64")
    first = load_features(rows, cfg, cache=tmp_path)
    cache = FeatureCache(tmp_path, cfg)
    flipped, cut = cache.file_for(rows[0].path), cache.file_for(rows[1].path)
    blob = bytearray(flipped.read_bytes())
    blob[len(blob) // 2] ^= 0x10  # one bit in the float16 data: np.load alone would not notice
    flipped.write_bytes(bytes(blob))
    cut.write_bytes(cut.read_bytes()[:-100])
    again = load_features(rows, cfg, cache=cache)
    assert sorted(calls[3:]) == sorted([rows[0].path, rows[1].path]) and cache.hits == 1
    for a, b in zip(first.features, again.features):
        np.testing.assert_array_equal(a, b)
    assert load_features(rows, cfg, cache=tmp_path).decoded == 0  # rewritten whole


def test_a_second_run_into_the_same_folder_is_refused(synth_corpus, tmp_path, capsys):
    import subprocess
    import sys

    from emovox.cli import main
    from emovox.training.run import LOCK_FILE

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"fh = open({str(out / LOCK_FILE)!r}, 'a+'); fcntl.flock(fh, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # a first run is training into `out`
        args = ["train", "--data_dir", str(synth_corpus), "--model", "cnn", "--epochs", "1", "--output_dir", str(out)]
        assert main(args) == 2
        assert "another emovox train is writing to this folder" in capsys.readouterr().err
        assert not (out / "best_model.pth").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_full_disk_while_saving_leaves_the_previous_model_intact(synth_corpus, tmp_path):
    """The file-size limit (RLIMIT_FSIZE) makes the kernel refuse writes part-way, as a full disk does."""
    import subprocess
    import sys

    from emovox.cli import main

    out = tmp_path / "m"
    assert main(["train", "--data_dir", str(synth_corpus), "--model", "cnn", "--epochs", "1", "--batch_size", "16",
                 "--no-progress", "--output_dir", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    child = ("import resource, signal, sys\n"
             "import json\n"
             "from emovox.modelio import save_model\n"
             "from emovox.models import build_model\n"
             f"cfg = json.load(open({str(out / 'model_config.json')!r}))\n"
             "big = build_model('crnn', n_features=64, n_classes=4)\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
             "try:\n"
             f"    save_model({str(out)!r}, big, cfg)\n"
             "except OSError as e:\n"
             "    print(e); sys.exit(3)\n")
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr
    assert "cannot write" in run.stdout and "best_model.pth" in run.stdout and "unchanged" in run.stdout
    after = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    assert after == before  # same files, same bytes, no temporary left behind


def test_a_run_killed_mid_training_resumes_to_the_uninterrupted_model(synth_corpus, tmp_path):
    """SIGKILL once the first checkpoint exists, then --resume: the same weights as a straight run, and no
    half-written file at any point (benchmarks/faults.py kills at random moments, many times)."""
    import signal
    import subprocess
    import sys
    import time

    from emovox.cli import main
    from emovox.modelio import load_model_dir

    args = ["train", "--data_dir", str(synth_corpus), "--model", "cnn", "--epochs", "4", "--batch_size", "8",
            "--early_stopping_patience", "0", "--seed", "5", "--no-progress", "--threads", "1",
            "--cache-dir", str(tmp_path / "c")]
    assert main(args + ["--output_dir", str(tmp_path / "straight")]) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "emovox.cli"] + args + ["--output_dir", str(out), "--resume"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL  # killed before it finished
    for f in out.iterdir():  # what is there is whole: json parses, checkpoints load
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix in (".pt", ".pth"):
            torch.load(f, weights_only=True)
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    assert not list(out.glob(".*.tmp"))
    a, b = load_model_dir(tmp_path / "straight"), load_model_dir(out)
    for (k, x), (_, y) in zip(a.pipeline.state_dict().items(), b.pipeline.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=k)


def test_pickled_full_models_name_the_documented_paths():
    """Full-model pickles record emovox.training.FullModel / FullStreamingModel, wherever the classes live."""
    import io
    import pickletools
    import zipfile

    from emovox.features import preset
    from emovox.models import build_model
    from emovox.training import FullModel, FullStreamingModel

    for cls, name, n in ((FullModel, "cnn", 64), (FullStreamingModel, "lstm", 13)):
        full = cls(build_model(name, n_features=n, n_classes=3), None, preset("seed003"), 1.0, ["a", "b", "c"])
        buf = io.BytesIO()
        torch.save(full, buf)
        data = next(zipfile.ZipFile(buf).read(f) for f in zipfile.ZipFile(buf).namelist() if f.endswith("data.pkl"))
        strings = [str(a) for op, a, _ in pickletools.genops(data) if isinstance(a, str)]
        assert f"emovox.training {cls.__name__}" in strings

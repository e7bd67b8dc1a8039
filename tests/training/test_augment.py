"""``emovox train --augment SPEC``: every family trains on degraded copies, records how, replays, reuses its caches,
and refuses bad specs and noise folders before any training work (synthetic corpus, tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import emovox.training.loop
from emovox.cli import main
from emovox.degrade.spec import Degrader

SPEC = "pink:0..20+gain:-20..0"  # cheap degradations: these tests are about the plumbing, not the DSP
TINY = {
    "cnn": ["--model-option", "channels=[8,8,8]", "--model-option", "hidden=8", "--n_mels", "32"],
    "cnn2d": ["--model-option", "channels=[8,8,8]", "--model-option", "hidden=[16,8]", "--n_mels", "32"],
    "crnn": ["--model-option", "channels=[8,8,8]", "--model-option", "proj_dim=16", "--model-option", "rnn_hidden=8",
             "--model-option", "hidden=16", "--n_mels", "32"],
    "fast": ["--model-option", "channels=[16,16,16,16]", "--n_mels", "32"],
    "lstm": ["--model-option", "hidden_size=8", "--model-option", "num_layers=1"],
}
FAST = ["--epochs", "1", "--batch_size", "16", "--val_split", "0.25", "--seed", "0", "--threads", "1", "--no-progress"]


class CountDegrades:
    """Counts waveform degradations while active."""

    def __init__(self, monkeypatch):
        self.n = 0
        original = Degrader.degrade

        def degrade(degrader, *a, **k):
            self.n += 1
            return original(degrader, *a, **k)

        monkeypatch.setattr(Degrader, "degrade", degrade)


def _train(corpus, out, cache, *extra, spec=SPEC) -> int:
    args = ["train", "--data_dir", str(corpus), "--output_dir", str(out), *FAST, *extra]
    if spec is not None:
        args += ["--augment", spec]
    if cache is None:
        return main([*args, "--no-cache"])
    return main([*args, "--cache-dir", str(cache)])


def _weights(out) -> dict:
    return torch.load(out / "best_model.pth", weights_only=True)["state_dict"]


def _meta(out) -> dict:
    return json.loads((out / "model_meta.json").read_text())


@pytest.mark.parametrize("model", ["cnn", "cnn2d", "crnn", "fast", "lstm"])
def test_frame_models_train_on_degraded_copies_and_record_the_spec(model, synth_corpus, tmp_path, monkeypatch):
    degrades = CountDegrades(monkeypatch)
    extra = ["--use_augmentation"] if model == "cnn" else []  # the feature-domain augmentation works on top
    assert _train(synth_corpus, tmp_path / "out", tmp_path / "cache", "--model", model, "--augment-copies", "2",
                  *TINY[model], *extra) == 0
    assert degrades.n == 2 * 60  # two copies of each of the 60 training clips; validation stays clean
    meta = _meta(tmp_path / "out")
    assert meta["augment"]["spec"] == SPEC and meta["augment"]["copies"] == 2
    assert meta["augment"]["description"] == SPEC and meta["augment"]["copies_computed"] == 120
    config = json.loads((tmp_path / "out" / "model_config.json").read_text())
    assert config["training"]["augment_spec"] == SPEC and config["training"]["augment_copies"] == 2


def test_same_seed_same_weights_and_the_second_run_computes_nothing(synth_corpus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    assert _train(synth_corpus, tmp_path / "a", cache, "--model", "cnn", *TINY["cnn"], "--epochs", "2") == 0
    degrades = CountDegrades(monkeypatch)
    assert _train(synth_corpus, tmp_path / "b", cache, "--model", "cnn", *TINY["cnn"], "--epochs", "2") == 0
    assert degrades.n == 0  # every copy's features read from the cache
    meta = _meta(tmp_path / "b")["augment"]
    assert meta["copies_computed"] == 0 and meta["copies_from_cache"] == 60
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # without a cache the copies are computed again, the same ones: the same model
    assert _train(synth_corpus, tmp_path / "c", None, "--model", "cnn", *TINY["cnn"], "--epochs", "2") == 0
    c = _weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)
    # a clean run gives another model (and its normalisation comes from clean clips only)
    assert _train(synth_corpus, tmp_path / "d", cache, "--model", "cnn", *TINY["cnn"], "--epochs", "2",
                  spec=None) == 0
    norm = lambda out: json.loads((out / "model_config.json").read_text())["normalization"]  # noqa: E731
    assert norm(tmp_path / "d") != norm(tmp_path / "a")


def test_each_epoch_draws_each_clip_from_the_clean_one_and_its_copies(synth_corpus, tmp_path):
    from emovox.data.cache import FeatureSet
    from emovox.data.corpora import scan
    from emovox.degrade import parse_spec
    from emovox.training.multicondition import MultiCondition

    rows = scan(synth_corpus, with_duration=False)[:40]
    clean = FeatureSet(features=[("clean", i) for i in range(40)], rows=rows, indices=list(range(40)))
    multi = MultiCondition(parse_spec(SPEC), 2, SPEC, seed=5,
                           features=[[("copy1", i) for i in range(40)], [("copy2", i) for i in range(40)]])
    first = multi.items(clean, range(40), epoch=0)
    assert [f[1] for f in first] == list(range(40)) and {f[0] for f in first} == {"clean", "copy1", "copy2"}
    again = MultiCondition(parse_spec(SPEC), 2, SPEC, seed=5, features=multi.features)
    assert again.items(clean, range(40), epoch=0) == first  # a resumed run draws the same
    assert multi.items(clean, range(40), epoch=1) != first


def test_bad_spec_is_refused_with_the_accepted_forms_before_any_work(synth_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(emovox.training.loop, "load_features", lambda *a, **k: pytest.fail("featurised"))
    assert _train(synth_corpus, tmp_path / "o", tmp_path / "cache", spec="hiss:5") != 0
    err = capsys.readouterr().err
    assert "unknown degradation 'hiss'" in err and "accepted: KIND[:VALUE]" in err and "real-world" in err
    assert _train(synth_corpus, tmp_path / "o", tmp_path / "cache", "--augment-copies", "2", spec=None) != 0
    assert "--augment-copies: only with --augment SPEC" in capsys.readouterr().err
    assert _train(synth_corpus, tmp_path / "o", tmp_path / "cache", "--augment-copies", "0") != 0
    assert "--augment-copies must be a whole number from 1 to 64" in capsys.readouterr().err


def test_noise_dir_empty_or_not_audio_is_a_clear_error(synth_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(emovox.training.loop, "load_features", lambda *a, **k: pytest.fail("featurised"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _train(synth_corpus, tmp_path / "o", None, "--noise-dir", str(empty), spec="noise:0..20") != 0
    assert "no audio files in it" in capsys.readouterr().err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "hum.wav").write_bytes(b"this is not audio at all" * 10)
    assert _train(synth_corpus, tmp_path / "o", None, "--noise-dir", str(junk), spec="noise:0..20") != 0
    assert "hum.wav is not readable audio" in capsys.readouterr().err
    assert _train(synth_corpus, tmp_path / "o", None, "--noise-dir", str(tmp_path / "nowhere"),
                  spec="noise:0..20") != 0
    assert "not a folder" in capsys.readouterr().err
    assert _train(synth_corpus, tmp_path / "o", None, spec="noise:0..20") != 0
    assert "--noise-dir FOLDER" in capsys.readouterr().err


def test_noise_dir_recordings_are_mixed_in(synth_corpus, tmp_path, capsys):
    import soundfile as sf

    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "fan.wav", np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    assert _train(synth_corpus, tmp_path / "o", None, "--noise-dir", str(noise), spec=SPEC) != 0
    assert "does not have; add a step such as noise:0..20" in capsys.readouterr().err
    assert _train(synth_corpus, tmp_path / "o", None, "--model", "cnn", *TINY["cnn"], "--noise-dir", str(noise),
                  spec="noise:0..10") == 0
    assert _meta(tmp_path / "o")["augment"]["noise_dir"] == str(noise)


@pytest.fixture(scope="module")
def wav2vec2(tmp_path_factory):
    """A tiny random wav2vec2 checkpoint (save_pretrained folder)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("backbone") / "wav2vec2"
    config = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, conv_dim=(16, 16, 16), conv_kernel=(10, 8, 8),
                                         conv_stride=(5, 8, 8), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=2, vocab_size=8)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(folder)
    return folder


class CountRuns:
    """Counts backbone passes while active."""

    def __init__(self, monkeypatch):
        from emovox.pretrained.backbones import Backbone

        self.n = 0
        original = Backbone.run

        def run(backbone, x, layers):
            self.n += 1
            return original(backbone, x, layers)

        monkeypatch.setattr(Backbone, "run", run)


@pytest.mark.parametrize("head", ["mean", "stats", "cnn", "attention"])
def test_ssl_heads_train_on_degraded_copies_and_reuse_them(head, wav2vec2, synth_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--model", "ssl", "--backbone", str(wav2vec2), "--ssl-head", head, "--probe-c", "0.1"]
    if head not in ("mean", "stats"):
        args = args[:-2] + ["--model-option", "channels=8", "--model-option", "hidden=8"]
    cache = tmp_path / "cache"
    degrades, runs = CountDegrades(monkeypatch), CountRuns(monkeypatch)
    assert _train(synth_corpus, tmp_path / "a", cache, *args) == 0
    assert degrades.n == 60 and runs.n == 80 + 60  # the clean clips, then one copy of each training clip
    meta = _meta(tmp_path / "a")
    assert meta["augment"]["spec"] == SPEC and meta["augment"]["copies_computed"] == 60
    if head in ("mean", "stats"):  # a probe keeps only the copies' pooled rows, never their sequences
        assert len(list(cache.glob("pooled-*/*/*.npy"))) == 60 and len(list(cache.glob("ssl-*/*/*.npy"))) == 80
        info = json.loads(next(cache.glob("pooled-*/cache.json")).read_text())
        assert info["runtime"] == "torch" and info["weights_hash"]
        assert ("log std" in info["pooling"]) == (head == "stats")
    else:
        assert len(list(cache.glob("ssl-*/*/*.npy"))) == 80 + 60
    degrades.n = runs.n = 0
    assert _train(synth_corpus, tmp_path / "b", cache, *args) == 0
    assert degrades.n == 0 and runs.n == 0  # the second run reads every state from the caches
    assert _meta(tmp_path / "b")["augment"]["copies_computed"] == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_probe_standardisation_comes_from_the_mix(wav2vec2, synth_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--model", "ssl", "--backbone", str(wav2vec2), "--ssl-head", "mean", "--probe-c", "0.1"]
    cache = tmp_path / "cache"
    assert _train(synth_corpus, tmp_path / "clean", cache, *args, spec=None) == 0
    assert _train(synth_corpus, tmp_path / "mix", cache, *args, spec="white:0") == 0
    clean, mix = _weights(tmp_path / "clean"), _weights(tmp_path / "mix")
    assert not torch.allclose(clean["pooled_mean"], mix["pooled_mean"], atol=1e-3)
    assert not torch.allclose(clean["pooled_std"], mix["pooled_std"], atol=1e-3)
    history = json.loads((tmp_path / "mix" / "training_history.json").read_text())
    assert history[0]["train_loss"] != json.loads((tmp_path / "clean" / "training_history.json").read_text())[0][
        "train_loss"]  # the fit saw the degraded rows too


def test_finetuned_backbone_degrades_each_step(wav2vec2, synth_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    degrades = CountDegrades(monkeypatch)
    assert _train(synth_corpus, tmp_path / "a", None, "--model", "ssl", "--backbone", str(wav2vec2),
                  "--finetune-backbone", "1", "--model-option", "channels=8", "--model-option", "hidden=8",
                  "--augment-copies", "3") == 0
    assert 20 < degrades.n < 60  # about 3 of every 4 training clips drawn degraded (the last short batch dropped)
    meta = _meta(tmp_path / "a")["augment"]
    assert meta["copies"] == 3 and meta["cached"] is False
    first = _weights(tmp_path / "a")
    assert _train(synth_corpus, tmp_path / "b", None, "--model", "ssl", "--backbone", str(wav2vec2),
                  "--finetune-backbone", "1", "--model-option", "channels=8", "--model-option", "hidden=8",
                  "--augment-copies", "3") == 0
    second = _weights(tmp_path / "b")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_babble_comes_from_training_speakers_only(synth_corpus, tmp_path):
    from emovox.data.corpora import scan
    from emovox.training.config import TrainConfig
    from emovox.training.multicondition import training_degrader
    from emovox.training.plan import map_labels, plan_splits

    rows, _, _, _ = map_labels(scan(synth_corpus, with_duration=False), None)
    plan = plan_splits(rows, TrainConfig(val_split=0.25))[0]
    degrader, pool = training_degrader(TrainConfig(augment_spec="babble:5"), plan.train)
    assert set(degrader.sources.babble) == {str(r.path) for r in plan.train} and pool
    assert not set(degrader.sources.babble_speakers) & {r.speaker for r in plan.val}
    _, other = training_degrader(TrainConfig(augment_spec="babble:5"), plan.train[:-1])
    assert other != pool  # another pool, other cache entries
    assert training_degrader(TrainConfig(augment_spec=SPEC), plan.train)[1] == ""


def test_a_resumed_run_replays_the_straight_one_and_another_spec_is_refused(synth_corpus, tmp_path):
    from emovox.data.corpora import scan
    from emovox.training.config import TrainConfig
    from emovox.training.plan import map_labels, plan_splits
    from emovox.training.run import train_model

    rows, labels, _, _ = map_labels(scan(synth_corpus, with_duration=False), None)
    base = dict(model="cnn", model_kwargs={"channels": [8, 8, 8], "hidden": 8}, batch_size=16, lr=3e-3, seed=3,
                early_stopping_patience=None, augment_spec=SPEC, augment_copies=2)
    plan = plan_splits(rows, TrainConfig(**base))[0]
    cache = tmp_path / "cache"
    straight = train_model(plan, labels, TrainConfig(epochs=3, **base), tmp_path / "straight", cache=cache, plots=False)
    train_model(plan, labels, TrainConfig(epochs=1, **base), tmp_path / "resumed", cache=cache, plots=False)
    resumed = train_model(plan, labels, TrainConfig(epochs=3, **base), tmp_path / "resumed", cache=cache, resume=True,
                          plots=False)
    for a, b in zip(straight.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5) and a["val_uar"] == b["val_uar"]
    with pytest.raises(ValueError, match="checkpoint was made with other"):
        train_model(plan, labels, TrainConfig(epochs=4, **{**base, "augment_copies": 1}), tmp_path / "resumed",
                    cache=cache, resume=True, plots=False)

"""One owner per default: the confidence threshold, the longest clip, the cache variable, TrainConfig's schema."""

from __future__ import annotations

import argparse
import warnings

import pytest

from emovox import defaults


def test_threshold_and_longest_clip_have_one_owner():
    from emovox import audio, inference
    from emovox.commands import classify, serve
    from emovox.server import settings

    assert inference.DEFAULT_THRESHOLD == settings.Settings().threshold == defaults.CONFIDENCE_THRESHOLD
    assert audio.DEFAULT_MAX_DURATION_S == defaults.MAX_CLIP_S
    assert settings.Settings().max_duration_s == defaults.MAX_SERVED_CLIP_S
    p = argparse.ArgumentParser()
    classify.add_arguments(p)
    args = p.parse_args(["x.wav"])
    assert (args.threshold, args.max_duration_s) == (defaults.CONFIDENCE_THRESHOLD, defaults.MAX_CLIP_S)
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    assert f"default {defaults.CONFIDENCE_THRESHOLD:.2f}" in p.format_help()


def test_cache_variable_and_its_deprecated_alias(monkeypatch, tmp_path):
    from emovox.data.cache import default_cache_dir
    from emovox.text.encoder import default_cache_dir as text_cache_dir

    monkeypatch.delenv("EMOVOX_CACHE_DIR", raising=False)
    monkeypatch.delenv("EMOVOX_CACHE", raising=False)
    assert defaults.cache_env() is None
    monkeypatch.setenv("EMOVOX_CACHE_DIR", str(tmp_path / "new"))
    monkeypatch.setenv("EMOVOX_CACHE", str(tmp_path / "old"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current name wins and warns about nothing
        assert default_cache_dir() == tmp_path / "new"
        assert text_cache_dir() == tmp_path / "new" / "text"
    monkeypatch.delenv("EMOVOX_CACHE_DIR")
    with pytest.warns(DeprecationWarning, match="EMOVOX_CACHE is deprecated: set EMOVOX_CACHE_DIR"):
        assert default_cache_dir() == tmp_path / "old"
    with pytest.warns(DeprecationWarning):
        assert text_cache_dir() == tmp_path / "old" / "text"


def test_train_config_from_dict_is_strict():
    from emovox.training.config import TrainConfig
    from emovox.training.run import TrainingError

    cfg = TrainConfig(model="cnn", epochs=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TrainingError, match=r"unknown TrainConfig field\(s\) 'epoch'.*known: model, "):
        TrainConfig.from_dict({**cfg.to_dict(), "epoch": 5})

"""One owner per default: the confidence threshold, the longest clip, the cache variable, TrainConfig's schema."""

from __future__ import annotations

import argparse
import inspect
import warnings

import pytest

from emovox import defaults


def test_threshold_and_longest_clip_have_one_owner():
    from emovox import audio, inference
    from emovox.commands import classify, serve
    from emovox.server import settings

    assert settings.Settings().threshold == defaults.CONFIDENCE_THRESHOLD
    assert inspect.signature(inference.EmotionModel).parameters["threshold"].default == defaults.CONFIDENCE_THRESHOLD
    assert inspect.signature(audio.load_audio).parameters["max_duration_s"].default == defaults.MAX_CLIP_S
    assert settings.Settings().max_duration_s == defaults.MAX_SERVED_CLIP_S
    p = argparse.ArgumentParser()
    classify.add_arguments(p)
    args = p.parse_args(["x.wav"])
    assert (args.threshold, classify._max_duration(args)) == (defaults.CONFIDENCE_THRESHOLD, defaults.MAX_CLIP_S)
    assert classify._max_duration(p.parse_args(["x.wav", "--segments"])) is None  # decoded in blocks
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


def test_serve_help_shows_the_settings_defaults(capsys):
    """Flags left out fall back to the environment, then to :class:`Settings`: the help names those defaults."""
    from emovox.cli import build_parser
    from emovox.server.settings import Settings

    with pytest.raises(SystemExit):
        build_parser("serve").parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    s = Settings()
    assert "(default: None)" not in text
    for env, value in [("EMOVOX_MAX_UPLOAD_MB", f"{s.max_upload_mb:g}"), ("EMOVOX_MAX_DURATION_S", f"{s.max_duration_s:g}"),
                       ("EMOVOX_MAX_BATCH", s.max_batch), ("EMOVOX_MAX_QUEUE", s.max_queue),
                       ("EMOVOX_REQUEST_TIMEOUT_S", f"{s.request_timeout_s:g}"), ("EMOVOX_MAX_PARTS", s.max_parts)]:
        assert f"env {env}; default {value}" in text, env

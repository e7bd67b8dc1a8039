"""Issue 18: the saved-model schema (ModelConfig), preset names and their aliases, and the one batched
crop/pad and zero-frame compaction of the pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from emovox.errors import ModelLoadError
from emovox.features import PRESET_ALIASES, PRESETS, preset
from emovox.frames import compact_frames, fix_frames, frame_counts, silence_features
from emovox.model_config import ModelConfig
from emovox.modelio import load_model_dir, make_config
from emovox.testing import create_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return create_model(tmp_path_factory.mktemp("cfg") / "model", model_kwargs={"channels": (8, 8, 8), "hidden": 8})


def _resave(src, dst, change):
    import shutil

    shutil.copytree(src, dst)
    ck = torch.load(dst / "best_model.pth", weights_only=True)
    change(ck["config"])
    torch.save(ck, dst / "best_model.pth")
    return dst


def test_model_config_round_trips_the_saved_json(model_dir):
    saved = json.loads((model_dir / "model_config.json").read_text())
    mc = ModelConfig.from_dict(saved)
    assert mc.model.name == "cnn" and mc.features == preset("logmel64") and mc.labels == saved["labels"]
    assert mc.to_dict() == saved
    assert load_model_dir(model_dir).model_config.temperature == saved["temperature"]


def test_unknown_model_config_keys_are_refused_naming_them_and_the_file(model_dir, tmp_path):
    bad = _resave(model_dir, tmp_path / "bad", lambda c: c.update(temprature=2.0))
    with pytest.raises(ModelLoadError, match=r"best_model.pth: unknown model config key\(s\) 'temprature'; known: "):
        load_model_dir(bad)
    nested = _resave(model_dir, tmp_path / "nested", lambda c: c["model"].update(kwarg={}))
    with pytest.raises(ModelLoadError, match=r"unknown key\(s\) 'kwarg' in the model config's 'model'"):
        load_model_dir(nested)
    with pytest.raises(ModelLoadError, match="unknown model config key"):
        make_config(model_name="cnn", model_kwargs={}, features=preset("logmel64"), labels=["a"], stats=None,
                    extra={"trainig": {}})


def test_older_model_configs_without_optional_keys_still_load(model_dir, tmp_path):
    def strip(c):
        for key in ("emovox_version", "io", "temperature", "normalization"):
            c.pop(key)

    old = load_model_dir(_resave(model_dir, tmp_path / "old", strip))
    assert old.model_config.temperature == 1.0 and old.model_config.normalization is None and old.config.get("io") is None


def test_preset_aliases_load_the_presets_they_name():
    assert set(PRESET_ALIASES) == {"seed000", "seed001", "seed003"}
    for alias, name in PRESET_ALIASES.items():
        assert alias in PRESETS and preset(alias) is preset(name) and alias not in list(PRESETS)
    assert preset("logmel64-hop512-100f").num_frames == 100 and preset("mfcc13-streaming").skip_zero_frames
    with pytest.raises(ValueError, match="older names: seed000 = logmel64-hop512-100f"):
        preset("seed002")


def test_batched_fix_frames_equals_each_clip_alone():
    cfg = preset("seed000")
    torch.manual_seed(0)
    feats = torch.randn(3, cfg.n_features, 140)
    lengths = torch.tensor([140, 60, 100])
    batched = fix_frames(feats, 100, cfg=cfg, lengths=lengths)
    for f, n, got in zip(feats, lengths.tolist(), batched):
        alone = f[:, :n]
        want = torch.full((cfg.n_features, 100), 0.0) + silence_features(cfg)[:, None]
        if n >= 100:
            want = alone[:, (n - 100) // 2 : (n - 100) // 2 + 100]
        else:
            want[:, (100 - n) // 2 : (100 - n) // 2 + n] = alone
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(fix_frames(alone, 100, cfg=cfg), want)
    padded = fix_frames(feats[0, :, :10], 14, offset=1)  # zeros, 1 frame on the left
    assert torch.equal(padded[:, 1:11], feats[0, :, :10]) and not padded[:, [0, 11, 12, 13]].any()


def test_compact_frames_moves_kept_frames_first_and_keeps_one_at_least():
    feats = torch.arange(2 * 1 * 5, dtype=torch.float32).view(2, 1, 5)
    keep = torch.tensor([[False, True, False, True, True], [False] * 5])
    out, counts = compact_frames(feats, keep)
    assert counts.tolist() == [3, 1] and out.shape == (2, 1, 3)
    assert out[0, 0].tolist() == [1.0, 3.0, 4.0] and out[1, 0].tolist() == [5.0, 0.0, 0.0]


def test_frame_counts_match_num_frames_for():
    for name in ("logmel64", "mfcc13-streaming", "framewise-librosa-mfcc13"):
        cfg = preset(name)
        n = torch.tensor([0, 1, 399, 400, 401, 559, 560, 16000])
        assert frame_counts(n, cfg).tolist() == [cfg.num_frames_for(int(v)) for v in n]

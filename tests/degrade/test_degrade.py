"""Degradations do what they say: SNR, band limits, RT60, codecs, level, determinism, bad specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emovox.degrade import PRESETS, SpecError, measure_quality, parse_spec
from emovox.degrade.conditions import DegradeError

SR = 16000
EXAMPLE = "examples/ravdess_03-01-05-02-01-01-12.flac"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    x, sr = sf.read(EXAMPLE, dtype="float32")
    assert sr == SR
    return x


@pytest.fixture(scope="module")
def talkers(speech) -> list[np.ndarray]:
    """Stand-ins for other speakers' clips: the example clip shifted and filtered differently."""
    rng = np.random.default_rng(1)
    return [np.roll(speech, int(rng.integers(len(speech)))) * float(rng.uniform(0.5, 2)) for _ in range(8)]


def snr_db(clean: np.ndarray, degraded: np.ndarray) -> float:
    noise = degraded.astype(np.float64) - clean
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise ** 2)))


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble"])
@pytest.mark.parametrize("target", [0.0, 5.0, 10.0, 20.0])
def test_additive_noise_at_the_requested_snr(speech, talkers, kind, target):
    y, applied = parse_spec(f"{kind}:{target:g}", babble=talkers).degrade(speech, seed=3)
    assert applied == f"{kind}:{target:g}"
    assert len(y) == len(speech)
    assert abs(snr_db(speech, y) - target) < 0.5


def band_energy_db(x: np.ndarray, lo: float, hi: float) -> float:
    from scipy.signal import welch

    f, p = welch(x.astype(np.float64), fs=SR, nperseg=1024)
    return float(10 * np.log10(np.sum(p[(f >= lo) & (f < hi)]) / np.sum(p)))


def test_telephone_keeps_300_to_3400_hz(speech):
    y, _ = parse_spec("telephone").degrade(speech, seed=0)
    assert len(y) == len(speech)
    assert band_energy_db(speech, 4000, 8000) > -35  # the studio clip has energy up there
    assert band_energy_db(y, 4000, 8000) < -50  # the 8-kHz line has none
    assert band_energy_db(y, 0, 150) < band_energy_db(speech, 0, 150) - 15
    assert measure_quality(y).bandwidth_hz < 4500 < measure_quality(speech).bandwidth_hz


@pytest.mark.parametrize("rt60", [0.3, 0.6, 1.0])
def test_room_reaches_the_requested_rt60(rt60):
    from pyroomacoustics.experimental import measure_rt60

    impulse = np.zeros(int(2.5 * SR), np.float32)
    impulse[100] = 1.0
    for seed in range(2):
        rir, _ = parse_spec(f"room:{rt60}").degrade(impulse, seed=seed)
        assert abs(measure_rt60(rir, fs=SR, decay_db=30) - rt60) < 0.2 * rt60


@pytest.mark.parametrize("spec", ["mp3:32", "opus:12", "mulaw", "alaw", "telephone:1"])
def test_codec_round_trip_changes_the_signal_and_keeps_its_length(speech, spec):
    y, _ = parse_spec(spec).degrade(speech, seed=0)
    assert len(y) == len(speech) and y.dtype == np.float32
    err = snr_db(speech, y)
    assert 0 < err < 60  # changed, but still the same speech (aligned: no encoder delay left)


def test_opus_bitrate_is_about_what_was_asked(speech):
    import io

    from emovox.degrade.conditions import opus_level

    buf = io.BytesIO()
    sf.write(buf, speech, SR, format="OGG", subtype="OPUS", compression_level=opus_level(12.0))
    kbps = len(buf.getvalue()) * 8 / (len(speech) / SR) / 1000
    assert 8 < kbps < 16


def test_gain_and_clipping(speech):
    quiet, _ = parse_spec("gain:-30").degrade(speech, seed=0)
    assert np.allclose(quiet, speech * 10 ** (-30 / 20), atol=1e-6)
    clipped, _ = parse_spec("clip:5").degrade(speech, seed=0)
    assert measure_quality(clipped).clipped_fraction > 0.01 > measure_quality(speech).clipped_fraction


def test_same_seed_same_samples_other_seed_other_samples(speech, talkers):
    d = parse_spec("real-world", babble=talkers)
    a, what_a = d.degrade(speech, seed=11)
    b, what_b = d.degrade(speech, seed=11)
    assert np.array_equal(a, b) and what_a == what_b
    others = {d.degrade(speech, seed=s)[1] for s in range(12, 20)}
    assert len(others) > 3  # the preset draws different chains


def test_degrading_leaves_the_callers_random_state_alone(speech):
    import random

    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    parse_spec("pink:5+room:0.3").degrade(speech, seed=1)
    assert (random.random(), np.random.rand()) == expected


def test_babble_leaves_out_the_clips_own_speaker(speech):
    silent = np.zeros_like(speech)
    d = parse_spec("babble:0", babble=[silent, speech], babble_speakers=["a", "b"])
    with pytest.raises(DegradeError, match="other than 'a'"):
        parse_spec("babble:0", babble=[silent], babble_speakers=["a"]).degrade(speech, 0, speaker="a")
    y, _ = d.degrade(speech, 0, speaker="b")  # only speaker a's (silent) clip is left: nothing added
    assert np.array_equal(y, speech)


@pytest.mark.parametrize("bad, says", [
    ("", "empty"), ("hiss:5", "unknown degradation 'hiss'"), ("pink", "needs a value"),
    ("pink:loud", "not a number"), ("room:5", "must lie in"), ("pink:20..5", "low..high"),
    ("pink:5++room:0.3", "empty degradation"), ("pink:nan", "finite"),
    ('{"steps": []}', "non-empty 'steps'"), ('{"steps": [{"spec": "pink:5", "p": 2}]}', "probability"),
    ('{"steps": [{"sepc": "pink:5"}]}', "'spec' or 'one_of'"), ("{not json", "not valid JSON"),
    ("missing.yaml", "does not exist"),
])
def test_bad_specs_are_refused_with_the_accepted_forms(bad, says):
    with pytest.raises(SpecError) as e:
        parse_spec(bad)
    assert says in str(e.value)
    assert "accepted: KIND[:VALUE]" in str(e.value) and "real-world" in str(e.value)


def test_yaml_and_json_files(tmp_path, speech):
    doc = {"steps": [{"one_of": ["pink:10", "white:10"], "p": 1.0}, {"spec": "gain:-6", "p": 1.0}], "copies": 3}
    (tmp_path / "mix.json").write_text(json.dumps(doc))
    (tmp_path / "mix.yaml").write_text("steps:\n  - one_of: [pink:10, white:10]\n    p: 1.0\n"
                                       "  - spec: gain:-6\ncopies: 3\n")
    a, b = parse_spec(str(tmp_path / "mix.json")), parse_spec(str(tmp_path / "mix.yaml"))
    assert a.describe() == b.describe() and a.key() == b.key() and a.copies == 3
    y, applied = a.degrade(speech, seed=2)
    assert applied.endswith("+gain:-6") and len(y) == len(speech)


def test_presets_parse():
    for name in PRESETS:
        assert parse_spec(name).stages


def test_phone_preset_always_puts_the_clip_through_a_line_or_a_codec(speech, talkers):
    d = parse_spec("phone", babble=talkers)
    for seed in range(12):
        y, applied = d.degrade(speech, seed=seed)
        assert len(y) == len(speech) and any(k in applied for k in ("telephone", "mp3", "opus")), applied


def test_noise_dir_errors(tmp_path, speech):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DegradeError, match="no audio files"):
        parse_spec("noise:10", noise_dir=empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "hum.wav").write_bytes(b"this is not a wav file at all")
    with pytest.raises(DegradeError, match="not readable audio"):
        parse_spec("noise:10", noise_dir=bad)
    with pytest.raises(DegradeError, match="--noise-dir FOLDER"):
        parse_spec("noise:10")
    good = tmp_path / "good"
    good.mkdir()
    sf.write(good / "fan.wav", np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1, SR)
    y, _ = parse_spec("noise:10", noise_dir=good).degrade(speech, seed=0)
    assert abs(snr_db(speech, y) - 10) < 0.5


def test_quality_flags_say_why(speech):
    clean = measure_quality(speech)
    assert not clean.poor and clean.snr_db > 30
    noisy = measure_quality(parse_spec("pink:0").degrade(speech, seed=0)[0])
    assert noisy.poor and any("noisy" in s for s in noisy.issues)
    quiet = measure_quality(parse_spec("gain:-40").degrade(speech, seed=0)[0])
    assert any("quiet" in s for s in quiet.issues)
    assert measure_quality(np.zeros(SR, np.float32)).snr_db <= 60  # silence: no crash


def test_quality_kinds_name_each_issue(speech):
    from emovox.degrade.quality import QUALITY_KINDS

    assert measure_quality(speech).kinds == ()
    assert measure_quality(parse_spec("pink:0").degrade(speech, seed=0)[0]).kinds == ("noisy",)
    assert measure_quality(parse_spec("gain:-40").degrade(speech, seed=0)[0]).kinds == ("quiet",)
    assert measure_quality(parse_spec("telephone").degrade(speech, seed=0)[0]).kinds == ("narrowband",)
    assert set(QUALITY_KINDS) == {"noisy", "quiet", "clipped", "narrowband"}


@pytest.mark.parametrize("value, words", [
    ([1.5], "must be an object"),
    ({"echo": 1.5}, "unknown kind 'echo'; known: noisy, quiet, clipped, narrowband"),
    ({"noisy": "big"}, "quality_temperature['noisy'] must be a number"),
    ({"noisy": float("nan")}, "must be a number in [0.2, 5.0]"),
    ({"noisy": 50.0}, "must be a number in [0.2, 5.0]"),
    ({"noisy": True}, "must be a number"),
])
def test_bad_quality_temperature_is_refused_naming_the_problem(value, words):
    from emovox.degrade.quality import check_quality_temperature

    with pytest.raises(ValueError) as e:
        check_quality_temperature(value, "model_config.json: ")
    assert words in str(e.value) and str(e.value).startswith("model_config.json: ")
    assert check_quality_temperature({"narrowband": 1.4, "quiet": 1}, "") == {"narrowband": 1.4, "quiet": 1.0}
    assert check_quality_temperature(None) is None


def test_retemper_is_softmax_at_the_multiplied_temperature():
    from emovox.runtime.answers import retemper, softmax

    z = np.random.default_rng(0).normal(size=(5, 7)) * 3
    for f in (0.5, 1.0, 1.7, 4.0):
        np.testing.assert_allclose(retemper(softmax(z, 1.3), f), softmax(z, 1.3 * f), atol=1e-12)


def test_a_model_config_names_its_resample_quality_and_an_unknown_one_is_refused(tmp_path):
    import emovox
    from emovox.errors import ModelLoadError
    from emovox.model_config import ModelConfig
    from emovox.modelio import load_model_dir, save_model

    loaded = load_model_dir(Path(emovox.__file__).parent / "assets" / "models" / "crnn")
    with pytest.raises(ModelLoadError, match="resample_quality must be one of VHQ, HQ, MQ, got 'QQ'"):
        ModelConfig.from_dict({**loaded.config, "resample_quality": "QQ"}, source="model_config.json")
    folder = save_model(tmp_path / "m", loaded.pipeline.model, {**loaded.config, "resample_quality": "MQ"})
    assert emovox.load_model(folder, backend="torch").resample_quality == "MQ"
    assert emovox.load_model("crnn", backend="torch").resample_quality == "HQ"


def test_quality_temperature_fit_recovers_known_factors():
    """Clips whose true temperature is 2 x 1.5 when flagged narrowband: the fit finds T 2 and factor 1.5; an
    issue no clip has keeps factor 1."""
    from emovox.training.evaluation import nll_quality_temperature

    rng = np.random.default_rng(0)
    n = 20000
    z = rng.normal(size=(n, 6)) * 4
    flags = np.zeros((n, 4), bool)
    flags[: n // 2, 3] = True
    t_true = 2.0 * np.where(flags[:, 3], 1.5, 1.0)[:, None]
    p = np.exp(z / t_true)
    p /= p.sum(1, keepdims=True)
    y = (rng.random((n, 1)) > np.cumsum(p, 1)).sum(1).clip(max=5)
    t, factors = nll_quality_temperature(z, y, flags)
    assert t == pytest.approx(2.0, rel=0.05) and factors[3] == pytest.approx(1.5, rel=0.05)
    assert factors[:3] == pytest.approx([1.0, 1.0, 1.0])

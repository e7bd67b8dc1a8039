"""emovox.features equals librosa (test-only dependency) with the same parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emovox.features import (
    MFCC,
    PRESETS,
    FeatureConfig,
    FeatureStats,
    LogMel,
    Normalize,
    build_frontend,
    mel_filterbank,
    normalize_level,
    preset,
    speech_level_db,
)
from emovox.frames import featurize, fix_frames, nonzero_frame_mask, silence_features

librosa = pytest.importorskip("librosa")
SR = 16000
# Tolerances: log-mel and MFCC within 2e-3 dB / coefficient units of librosa (float32 vs float64 FFTs).
DB_TOL = 2e-3


@pytest.fixture(scope="module")
def speechlike():
    rng = np.random.default_rng(0)
    t = np.arange(int(1.7 * SR)) / SR
    f0 = 140 + 30 * np.sin(2 * np.pi * 2 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x = x + 0.01 * rng.standard_normal(len(t))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def librosa_kwargs(cfg: FeatureConfig):
    return dict(sr=cfg.sample_rate_hz, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                n_mels=cfg.n_mels, center=cfg.center, fmin=cfg.fmin_hz, fmax=cfg.fmax_hz, power=cfg.power)


def test_filterbank_equals_librosa():
    for n_fft, n_mels, fmax in [(512, 64, None), (2048, 64, None), (400, 40, 7600.0)]:
        ours = mel_filterbank(SR, n_fft, n_mels, 0.0, fmax)
        ref = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmax=fmax)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)
    assert mel_filterbank(SR, 512, 64) is mel_filterbank(SR, 512, 64)  # cached


@pytest.mark.parametrize("name", ["logmel64", "seed000"])
@pytest.mark.parametrize("stft_mode", ["torch", "conv"])
def test_logmel_equals_librosa(speechlike, name, stft_mode):
    cfg = PRESETS[name]
    ours = LogMel(cfg, stft_mode=stft_mode)(torch.from_numpy(speechlike)[None])[0].numpy()
    power = librosa.feature.melspectrogram(y=speechlike, **librosa_kwargs(cfg))
    ref = librosa.power_to_db(power, ref=1.0, amin=cfg.log_floor, top_db=None)
    assert ours.shape == ref.shape
    # everywhere within 0.2 dB (the conv STFT sums in float32: near the -100 dB floor that matters)
    assert np.abs(ours - ref).max() < 0.2
    # where the energy is not negligible, agreement is much tighter
    loud = ref > ref.max() - 60
    assert np.abs(ours - ref)[loud].max() < DB_TOL


def test_mel_power_relative_error(speechlike):
    cfg = PRESETS["logmel64"]
    ours = LogMel(cfg).mel_power(torch.from_numpy(speechlike)[None])[0].numpy()
    ref = librosa.feature.melspectrogram(y=speechlike, **librosa_kwargs(cfg))
    big = ref > ref.max() * 1e-6
    np.testing.assert_allclose(ours[big], ref[big], rtol=1e-3)


def test_top_db_matches_librosa(speechlike):
    cfg = PRESETS["logmel64"].replace(top_db=80.0)
    ours = LogMel(cfg)(torch.from_numpy(speechlike)[None])[0].numpy()
    ref = librosa.power_to_db(librosa.feature.melspectrogram(y=speechlike, **librosa_kwargs(cfg)), top_db=80.0)
    assert np.abs(ours - ref).max() < DB_TOL * 5


@pytest.mark.parametrize("name", ["mfcc13", "seed003"])
def test_mfcc_equals_librosa(speechlike, name):
    cfg = PRESETS[name].replace(skip_zero_frames=False)
    ours = MFCC(cfg)(torch.from_numpy(speechlike)[None])[0].numpy()
    S = librosa.power_to_db(librosa.feature.melspectrogram(y=speechlike, **librosa_kwargs(cfg)), top_db=None)
    ref = librosa.feature.mfcc(S=S, n_mfcc=cfg.n_mfcc)
    assert ours.shape == ref.shape == (13, ref.shape[1])
    assert np.abs(ours - ref).max() < 1e-2
    assert np.abs(ours - ref)[:, 1:-1].mean() < 1e-3


def test_batched_equals_single_and_conv_equals_stft(speechlike):
    x = torch.from_numpy(np.stack([speechlike, speechlike[::-1].copy(), 0.5 * speechlike]))
    for cfg in PRESETS.values():
        fe, fc = build_frontend(cfg), build_frontend(cfg, stft_mode="conv")
        batch = fe(x)
        for i in range(3):
            torch.testing.assert_close(batch[i], fe(x[i : i + 1])[0], rtol=1e-4, atol=1e-3)
        loud = batch > batch.amax() - 60
        assert (fc(x) - batch).abs()[loud].max() < 1e-2


def test_seed000_preset_is_3_2_seconds():
    cfg = preset("seed000")
    assert (cfg.n_mels, cfg.n_fft, cfg.hop_length, cfg.num_frames) == (64, 2048, 512, 100)
    assert cfg.samples_for(100) / SR == pytest.approx(3.2, abs=0.05)
    assert cfg.num_frames_for(cfg.samples_for(100)) == 100
    with pytest.raises(ValueError, match="unknown feature preset 'nope'; available: logmel64"):
        preset("nope")


def test_seed003_mfcc_skips_all_zero_frames_in_one_batched_transform(speechlike):
    cfg = preset("seed003")
    assert (cfg.n_mfcc, cfg.window_length, cfg.hop_length) == (13, 400, 160)  # 25 ms / 10 ms
    padded = np.concatenate([np.zeros(3200, np.float32), speechlike, np.zeros(1600, np.float32)])
    full = MFCC(cfg)(torch.from_numpy(padded)[None])[0]
    mask = nonzero_frame_mask(torch.from_numpy(padded), cfg)[0]
    kept = featurize(padded, cfg)[0]
    assert kept.shape[1] == int(mask.sum()) < full.shape[1]
    assert (full.shape[1] - kept.shape[1]) == 18 + 7  # frames entirely inside the zero runs
    torch.testing.assert_close(kept, full[:, mask])


def test_fix_frames_crops_and_pads_with_silence():
    cfg = preset("logmel64")
    f = torch.arange(64 * 10, dtype=torch.float32).view(64, 10)
    assert fix_frames(f, 10) is f
    torch.testing.assert_close(fix_frames(f, 4), f[:, 3:7])
    torch.testing.assert_close(fix_frames(f, 4, offset=0), f[:, :4])
    padded = fix_frames(f, 14, cfg=cfg)
    assert padded.shape == (64, 14)
    torch.testing.assert_close(padded[:, 2:12], f)
    assert torch.all(padded[:, :2] == silence_features(cfg)[:, None])
    assert float(silence_features(cfg)[0]) == pytest.approx(-100.0)  # 10*log10(1e-10)
    batch = fix_frames(f.expand(3, 64, 10), 12, cfg=cfg)
    assert batch.shape == (3, 64, 12)


def test_feature_stats_fit_and_normalize_roundtrip():
    rng = np.random.default_rng(1)
    feats = [torch.from_numpy(rng.normal(5, 2, (13, n)).astype(np.float32)) for n in (50, 70, 90)]
    stats = FeatureStats.fit(feats)
    allf = torch.cat(feats, dim=1)
    np.testing.assert_allclose(stats.mean, allf.mean(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(stats.std, allf.std(1, unbiased=False).numpy(), rtol=1e-4)
    norm = Normalize(FeatureStats.from_dict(stats.to_dict()), 13)
    out = norm(allf[None])[0]
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1) < 1e-2
    with pytest.raises(ValueError, match="13 values, features have 64"):
        Normalize(stats, 64)
    with pytest.raises(ValueError, match="zero frames"):
        FeatureStats.fit([])


def test_config_validation_and_roundtrip():
    cfg = FeatureConfig(kind="mfcc", n_mfcc=20, n_mels=40)
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="kind must be 'logmel' or 'mfcc'"):
        FeatureConfig(kind="cqt")
    with pytest.raises(ValueError, match="win_length"):
        FeatureConfig(n_fft=256, win_length=400)
    with pytest.raises(ValueError, match="unknown FeatureConfig fields"):
        FeatureConfig.from_dict({"kind": "logmel", "bogus": 1})


def test_file_and_array_input_give_the_same_features(tmp_path, speechlike):
    import soundfile as sf

    from emovox.audio import load_audio

    sf.write(tmp_path / "x.wav", speechlike, SR, subtype="FLOAT")
    a = featurize(load_audio(tmp_path / "x.wav"), preset("logmel64"))[0]
    b = featurize(speechlike, preset("logmel64"))[0]
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# Speech-level normalisation


def test_speech_level_moves_with_gain_and_normalised_features_do_not(speechlike):
    cfg = preset("logmel128l")
    assert cfg.level_db == 0.0 and preset("logmel128").level_db is None
    fe = build_frontend(cfg)
    with torch.no_grad():
        loud, quiet = fe(torch.from_numpy(speechlike)[None]), fe(torch.from_numpy(speechlike * 0.05)[None])
    # every frame's energy moves by 20*log10(0.05) = -26.02 dB, and so does the 90th percentile
    shift = float(speech_level_db(quiet) - speech_level_db(loud))
    assert shift == pytest.approx(20 * np.log10(0.05), abs=1e-3)
    a, b = normalize_level(loud, cfg), normalize_level(quiet, cfg)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    assert float(speech_level_db(a)) == pytest.approx(cfg.level_db, abs=1e-3)
    # the level is a quantile over frames: the 90th percentile of the frame energies, by hand
    energy = 10 * np.log10((10 ** (loud[0].double().numpy() / 10)).sum(axis=0))
    expected = np.sort(energy)[int(np.floor(0.9 * (len(energy) - 1)))]
    assert float(speech_level_db(loud)) == pytest.approx(expected, abs=1e-3)


def test_speech_level_of_a_padded_batch_equals_each_clip_alone(speechlike):
    cfg = preset("logmel128l")
    fe = build_frontend(cfg)
    with torch.no_grad():
        feats = fe(torch.from_numpy(speechlike)[None])[0]
    n = feats.shape[-1]
    lengths = torch.tensor([n, n - 40, 7])
    batch = torch.full((3, feats.shape[0], n), -100.0)  # padding: the log floor, or anything else
    for i, k in enumerate(lengths.tolist()):
        batch[i, :, :k] = feats[:, :k]
    batch[2, :, 7:] = 50.0  # loud padding must not count
    got = normalize_level(batch, cfg, lengths)
    for i, k in enumerate(lengths.tolist()):
        torch.testing.assert_close(got[i, :, :k], normalize_level(feats[:, :k], cfg), atol=1e-4, rtol=0)


def test_speech_level_never_raises_near_silence_more_than_the_cap():
    cfg = preset("logmel128l")
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 1e-5  # about -100 dBFS
    with torch.no_grad():
        raw = build_frontend(cfg)(torch.from_numpy(x)[None])
    out = normalize_level(raw, cfg)
    torch.testing.assert_close(out - raw, torch.full_like(raw, cfg.level_max_gain_db))
    assert float(speech_level_db(out)) < cfg.level_db - 10  # still far below speech level


def test_level_normalisation_is_for_log_mel_only():
    with pytest.raises(ValueError, match="level_db .* applies to log-mel"):
        FeatureConfig(kind="mfcc", level_db=0.0)
    with pytest.raises(ValueError, match="level_max_gain_db"):
        FeatureConfig(level_db=0.0, level_max_gain_db=-1.0)
    cfg = preset("logmel128l")
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    # a model saved before these fields existed loads with level normalisation off
    old = {k: v for k, v in preset("logmel128").to_dict().items() if not k.startswith("level")}
    assert FeatureConfig.from_dict(old).level_db is None


# ---------------------------------------------------------------------------------------------
# Seed 003's backend pipeline (framewise-librosa-mfcc13) against its own librosa loop

SEED003_TOL = 1e-3  # MFCC units; c0 reaches ~900, so this is float32 rounding


@pytest.fixture(scope="module")
def seed003_real(shared_data, seed003_loop):
    """Two real clips (RAVDESS FLAC, CREMA-D Opus; 1.5 s of each, speech and pause) and the seed's
    loop's features of each."""
    from emovox.audio import load_audio

    files = [sorted((shared_data / "ravdess" / "Actor_05").glob("*.flac"))[9],
             sorted((shared_data / "crema-d").glob("*.opus"))[40]]
    waves = [load_audio(f, sample_rate_hz=SR)[SR // 2 : 2 * SR] for f in files]
    return [(w, seed003_loop(w)) for w in waves]


@pytest.mark.parametrize("stft_mode", ["torch", "conv"])
def test_framewise_librosa_preset_equals_seed003_loop_on_real_clips(seed003_real, stft_mode):
    """One batched transform (both STFT modes) equals the seed's per-frame librosa loop on real speech."""
    cfg = preset("framewise-librosa-mfcc13")
    for wave, want in seed003_real:
        got = featurize(wave, cfg, build_frontend(cfg, stft_mode=stft_mode))[0].T.numpy()
        assert got.shape == want.shape and want.shape[0] > 100
        assert np.abs(got - want).max() < SEED003_TOL


def test_framewise_librosa_preset_on_a_synthetic_clip(speechlike, seed003_loop):
    """Digital silence (skipped frames, frames partly zero), a near-silent stretch (where the -100 dB
    floor and the per-frame top_db both bite) and a clip level that peak normalisation removes."""
    cfg = preset("framewise-librosa-mfcc13")
    quiet = 1e-6 * speechlike[:4000]
    x = np.concatenate([np.zeros(1234, np.float32), speechlike, np.zeros(800, np.float32), quiet]).astype(np.float32)
    want = seed003_loop(x)
    got = featurize(x, cfg)[0].T.numpy()
    assert got.shape == want.shape == (cfg.num_frames_for(len(x)) - 6 - 3, 13)  # 6 + 3 all-zero frames skipped
    assert np.abs(got - want).max() < SEED003_TOL
    quieter = featurize(0.05 * x, cfg)[0].T.numpy()  # the clip is divided by its peak first
    assert np.abs(quieter - got).max() < 1e-2  # float32 rounding of the scaled samples, at c0 ~ 900


def test_framewise_librosa_preset_is_documented_and_checked():
    cfg = preset("framewise-librosa-mfcc13")
    assert (cfg.n_fft, cfg.window_length, cfg.hop_length, cfg.n_mels, cfg.n_mfcc, cfg.top_db) == (2048, 400, 160, 128,
                                                                                                   13, 80.0)
    assert cfg.peak_normalize and cfg.librosa_per_frame and cfg.skip_zero_frames and not cfg.center
    assert (cfg.frame_span, cfg.num_frames_for(399), cfg.num_frames_for(400), cfg.samples_for(3)) == (400, 0, 1, 720)
    with pytest.raises(ValueError, match="librosa_per_frame .* needs center=False and win_length at most"):
        cfg.replace(center=True)
    with pytest.raises(ValueError, match="win_length at most min"):
        cfg.replace(win_length=600)

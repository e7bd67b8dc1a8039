"""``preprocessing.json``: everything a device needs to compute a feature-in model's input exactly.

The numbers come from the same code the model was trained with (:mod:`emovox.features`): the
padded periodic Hann window, the Slaney mel filterbank, the DCT matrix, the silence column used
for padding and the normalisation statistics. Matrices are written in full (float32 values,
9 significant digits, which round-trip exactly), so a device engineer copies them instead of
re-deriving a mel scale that may differ in a detail.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emovox.features import (
    LEVEL_QUANTILE,
    PEAK_EPS,
    FeatureConfig,
    dct_matrix,
    mel_filterbank,
    padded_window,
)
from emovox.frames import silence_features

SPEC_FORMAT = "emovox-preprocessing"
SPEC_VERSION = 1


def _f32(a) -> Any:
    """float32 values as JSON numbers that round-trip exactly (nested lists for arrays)."""
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim == 0:
        return float(f"{float(arr):.9g}")
    return [_f32(x) for x in arr]


def preprocessing_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing spec of a model config (``model_config.json``), as a JSON-able dict."""
    cfg = FeatureConfig.from_dict(config["features"])
    if cfg.kind == "waveform":
        return _waveform_spec(config, cfg)
    wl = cfg.window_length
    n_bins = cfg.n_fft // 2 + 1
    fb = mel_filterbank(cfg.sample_rate_hz, cfg.n_fft, cfg.n_mels, cfg.fmin_hz, cfg.fmax_hz)
    norm = config.get("normalization")
    streaming = _is_streaming(config)
    spec: dict[str, Any] = {
        "format": SPEC_FORMAT,
        "format_version": SPEC_VERSION,
        "summary": _summary(cfg),
        "audio": _audio_spec(cfg),
        "kind": cfg.kind,
        "stft": {
            "n_fft": cfg.n_fft,
            "win_length": wl,
            "hop_length": cfg.hop_length,
            "window": "hann",
            "window_periodic": True,
            **_window_spec(cfg),
            "window_values": _f32(padded_window(cfg).numpy()),
            "center": cfg.center,
            "center_padding": ({"left": cfg.n_fft // 2, "right": cfg.n_fft // 2, "mode": "constant zeros"}
                               if cfg.center else None),
            "frame_t_start_sample": ("t*hop_length - n_fft//2 (samples before 0 and past the end are 0)"
                                     if cfg.center else "t*hop_length"),
            "power": cfg.power,
            "spectrum": f"onesided: bins k = 0..{n_bins - 1}, power = (re^2 + im^2)"
                        + ("" if cfg.power == 2.0 else f" ** ({cfg.power}/2)"),
            "dft_sign": "X[k] = sum_n x[n]*w[n]*exp(-2j*pi*k*n/n_fft) (unnormalised)",
        },
        "mel": {
            "n_mels": cfg.n_mels,
            "fmin_hz": cfg.fmin_hz,
            "fmax_hz": cfg.fmax_hz if cfg.fmax_hz is not None else cfg.sample_rate_hz / 2,
            "scale": "slaney",
            "norm": "slaney (area)",
            "equals": "librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) (htk=False, norm='slaney')",
            "filterbank_shape": [cfg.n_mels, n_bins],
            "filterbank": _f32(fb),
            "apply": "mel_power[m, t] = sum_k filterbank[m, k] * power[k, t]",
        },
        "log": {
            "formula": "10*log10(max(mel_power, floor))",
            "floor": cfg.log_floor,
            "reference": 1.0,
            "top_db": cfg.top_db,
            "top_db_note": (None if cfg.top_db is None else
                            "then x[m, t] = max(x[m, t], max_over_mels(x[:, t]) - top_db), per frame t"
                            if cfg.librosa_per_frame else
                            "then x = max(x, max_over_clip(x) - top_db), the max over all mels and frames"),
        },
        "level": {
            "enabled": cfg.level_db is not None,
            "level_db": cfg.level_db,
            "max_gain_db": cfg.level_max_gain_db if cfg.level_db is not None else None,
            "rule": ("last, just before normalization, over the frames the model gets (after any crop/pad): "
                     "energy[t] = 10*log10(sum_m 10**(x[m, t]/10)); "
                     f"level = sorted(energy over the clip's frames)[floor({LEVEL_QUANTILE}*(frames-1))]; "
                     "x += min(level_db - level, max_gain_db)"),
            "applied_in_graph": True,
            "note": "the waveform and the feature graphs both apply it: feed the log-mel dB from before it",
        },
        "mfcc": ({
            "n_mfcc": cfg.n_mfcc,
            "dct": "type II, orthonormal (scipy.fft.dct(type=2, norm='ortho') over the mel axis)",
            "dct_matrix_shape": [cfg.n_mfcc, cfg.n_mels],
            "dct_matrix": _f32(dct_matrix(cfg.n_mfcc, cfg.n_mels)),
            "apply": "mfcc[i, t] = sum_m dct_matrix[i, m] * log_mel_db[m, t]",
        } if cfg.kind == "mfcc" else None),
        "frames": _frames(cfg),
        "skip_zero_frames": {
            "enabled": bool(cfg.kind == "mfcc" and cfg.skip_zero_frames),
            "rule": "drop a frame when its win_length window samples are all exactly 0.0 (digital silence); "
                    "a clip with no other frame keeps its first frame",
        },
        "normalization": {
            "mean": _f32(norm["mean"]) if norm else None,
            "std": _f32(norm["std"]) if norm else None,
            "formula": "(x[f, t] - mean[f]) / std[f]" if norm else "none (identity)",
            "applied_in_graph": True,
            "note": "every exported graph normalises inside: feed raw log-mel dB (or raw MFCC), not normalised values",
        },
        "layout": {
            "features": ("(batch, frames, n_features): one frame is (1, 1, n_features)" if streaming
                         else "(batch, n_features, frames), row-major: frames vary fastest"),
            "waveform": "(batch, samples)",
        },
        "labels": list(config["labels"]),
        "temperature": float(config.get("temperature", 1.0)),
        "probabilities": "softmax(logits / temperature)",
    }
    return spec


def _audio_spec(cfg: FeatureConfig) -> dict[str, Any]:
    """What the device must hand the graph (or the front-end) before anything else."""
    return {
        "sample_rate_hz": cfg.sample_rate_hz,
        "channels": 1,
        "dtype": "float32",
        "range": "[-1, 1] (full-scale PCM divided by 32768 for 16-bit)",
        "note": "resample to sample_rate_hz and mix to mono before anything else",
        "peak_normalize": cfg.peak_normalize,
        "peak_normalize_rule": (f"x = x / (max(|x|) + {PEAK_EPS:g}) over the whole clip, before framing; the waveform "
                                "graph does it inside" if cfg.peak_normalize else None),
    }


def _window_spec(cfg: FeatureConfig) -> dict[str, Any]:
    """How the window lies over one frame: centred in n_fft, or (librosa_per_frame) a lone frame as librosa pads it."""
    wl = cfg.window_length
    if cfg.librosa_per_frame:
        return {
            "window_formula": (f"w[n] = 0.5 - 0.5*cos(2*pi*(n + n_fft//2)/n_fft), n = 0..win_length-1: the second half of "
                               f"a periodic Hann of n_fft points, where librosa.feature.mfcc(y=frame, n_fft={cfg.n_fft}, "
                               "center=True) puts a lone frame's samples"),
            "window_padding": {"left": 0, "right": cfg.n_fft - wl,
                               "note": "each win_length frame times w, zero-padded to n_fft (FFT of n_fft points)"},
        }
    left = cfg.window_offset
    return {
        "window_formula": "w[n] = 0.5 - 0.5*cos(2*pi*n/win_length), n = 0..win_length-1 (periodic Hann)",
        "window_padding": {"left": left, "right": cfg.n_fft - wl - left,
                           "note": "the win_length window is zero-padded to n_fft, centred"},
    }


def _waveform_spec(config: dict[str, Any], cfg: FeatureConfig) -> dict[str, Any]:
    """Raw-sample models (ssl): nothing to compute on the device but the samples themselves."""
    backbone = (config["model"].get("kwargs") or {}).get("backbone") or {}
    return {
        "format": SPEC_FORMAT,
        "format_version": SPEC_VERSION,
        "summary": f"raw {cfg.sample_rate_hz} Hz mono samples; the pretrained speech backbone inside the graph is "
                   "the front-end",
        "audio": _audio_spec(cfg),
        "kind": cfg.kind,
        "input_normalization": {
            "per_clip_zero_mean_unit_variance": bool(backbone.get("normalize", True)),
            "formula": "(x - mean(x)) / sqrt(var(x) + 1e-7) over the whole clip",
            "applied_in_graph": True,
            "source": backbone.get("normalize_from", ""),
        },
        "backbone": {k: backbone.get(k) for k in ("source", "kind", "model_type", "num_layers", "hidden_size",
                                                   "config_hash", "weights_hash")},
        "layout": {"waveform": "(batch, samples)"},
        "labels": list(config["labels"]),
        "temperature": float(config.get("temperature", 1.0)),
        "probabilities": "softmax(logits / temperature)",
    }


def _is_streaming(config: dict[str, Any]) -> bool:
    from emovox.models import MODELS, load_all
    from emovox.models.common import is_streaming

    load_all()
    cls = MODELS.get(config["model"]["name"])
    return is_streaming(cls)


def _summary(cfg: FeatureConfig) -> str:
    what = f"{cfg.n_mfcc} MFCC from {cfg.n_mels} mels" if cfg.kind == "mfcc" else f"{cfg.n_mels}-bin log-mel (dB)"
    wl = cfg.window_length
    s = (f"{what}: {cfg.sample_rate_hz} Hz mono, periodic Hann {wl} samples ({1000 * wl / cfg.sample_rate_hz:g} ms) "
         f"in an {cfg.n_fft}-point FFT, hop {cfg.hop_length} ({1000 * cfg.hop_length / cfg.sample_rate_hz:g} ms), "
         f"{'centred with zero padding' if cfg.center else 'no centre padding'}")
    if cfg.librosa_per_frame:
        s += (f"; each frame as one librosa.feature.mfcc(y=frame, n_fft={cfg.n_fft}) call (the streaming MFCC-LSTM's loop): the "
              f"second half of an {cfg.n_fft}-point Hann" + ("" if cfg.top_db is None else f", top_db {cfg.top_db:g} per frame"))
    if cfg.peak_normalize:
        s = "peak-normalised clip; " + s
    if cfg.num_frames:
        s += (f"; {cfg.num_frames} frames x hop {cfg.hop_length} = "
              f"{cfg.num_frames * cfg.hop_length / cfg.sample_rate_hz:g} s of audio")
    return s


def _frames(cfg: FeatureConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "count_for_samples": ("1 + samples // hop_length" if cfg.center
                              else f"1 + (samples - {cfg.frame_span}) // hop_length (0 when samples < {cfg.frame_span})"),
        "num_frames": cfg.num_frames,
    }
    if cfg.num_frames:
        n = cfg.samples_for(cfg.num_frames)
        out.update({
            "duration_s": cfg.num_frames * cfg.hop_length / cfg.sample_rate_hz,
            "duration_note": "num_frames x hop_length / sample_rate_hz: the time the frames cover",
            "samples_for_num_frames": n,
            "samples_note": "the fewest samples that give exactly num_frames frames; longer clips are cropped",
            "crop_or_pad": "centre: crop frames [(t-n)//2, (t-n)//2 + n) when t > n; when t < n put the t frames at "
                           "offset (n-t)//2 and fill the rest with silence_column",
            "silence_column": _f32(silence_features(cfg).numpy()),
            "silence_column_note": "the features of digital silence (log floor), per feature, before normalisation",
        })
    return out

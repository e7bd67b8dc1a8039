"""A model on disk, and the waveform-to-logits pipeline every consumer shares.

A model folder (written by ``emovox train``) holds:

- ``best_model.pth``: ``{"format", "format_version", "config", "state_dict"}``, only tensors and
  plain Python values, so it loads with ``torch.load(weights_only=True)`` (no unpickling of
  arbitrary objects);
- ``model_config.json``: the same ``config`` for people and tools;
- ``labels.json``: the labels in output order;
- evaluation artifacts (metrics, confusion matrices, plots) beside them.

``config`` holds everything needed to rebuild the model exactly: ``model`` (registry name and
kwargs), ``features`` (a :class:`~emovox.features.FeatureConfig`), ``normalization`` (feature
statistics fitted on the training data), ``labels``, ``temperature`` (calibration) and ``io``
(tensor names used by exports).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emovox import __version__
from emovox.atomic import write_files
from emovox.defaults import CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE
from emovox.errors import ModelLoadError
from emovox.features import FeatureConfig, FeatureStats, Normalize, build_frontend, prepare_input
from emovox.frames import compact_frames, fix_frames, frame_counts, nonzero_frame_mask, pad_to_one_frame
from emovox.model_config import FORMAT, FORMAT_VERSION, ModelConfig
from emovox.models import build_model
from emovox.models.common import head_logits, is_streaming, stream_step

FULL_MODEL_FILE = "model_full.pth"
#: ``--save-full-model`` for streaming models: the streaming MFCC-LSTM's file names, and a pickle-free TorchScript twin.
STREAMING_FULL_MODEL_FILE = "model.pth"
STREAMING_WEIGHTS_FILE = "model_weights.pth"
STREAMING_TORCHSCRIPT_FILE = "model_torchscript.pt"


def make_config(*, model_name: str, model_kwargs: dict[str, Any], features: FeatureConfig,
                labels: list[str], stats: FeatureStats | None, temperature: float = 1.0,
                io: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "emovox_version": __version__,
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "features": features.to_dict(),
        "normalization": stats.to_dict() if stats is not None else None,
        "labels": list(labels),
        "temperature": float(temperature),
        "io": dict(io or default_io(features)),
    }
    if extra:
        cfg.update(extra)
    ModelConfig.from_dict(cfg)  # the schema's check: an extra key it does not know fails here, not at loading
    return cfg


def default_io(features: FeatureConfig) -> dict[str, str]:
    """Tensor names used by exports (the Core ML mobile CNN's Core ML names for log-mel models)."""
    feat_name = "log_mel_spectrogram" if features.kind == "logmel" else "mfcc"
    return {"features_input": feat_name, "waveform_input": "waveform", "output": "emotion_logits"}


def streaming_step(pipeline: nn.Module, raw: torch.Tensor, hidden: Any = None, *, every_frame: bool = False
                   ) -> tuple[torch.Tensor, Any]:
    """One streaming step: raw features of new complete frames ``(batch, n_features, frames)`` →
    normalised (:func:`~emovox.features.prepare_input`) → the model continues from ``hidden`` →
    logits after the last frame (after every frame with ``every_frame``) and the new state
    (:func:`emovox.models.common.stream_step`). ``pipeline``: an :class:`EmotionPipeline`, or
    anything with its ``feature_config``, ``normalize`` and ``model`` (a training
    ``FullStreamingModel``). Trace-safe: :class:`emovox.runtime.streaming.StreamingSession` and the exported
    step graphs (:class:`emovox.export.graphs.StreamingStepGraph`) both run it."""
    feats = prepare_input(raw, pipeline.feature_config, pipeline.normalize)
    return stream_step(pipeline.model, feats, hidden, every_frame=every_frame)


class EmotionPipeline(nn.Module):
    """Waveforms ``(batch, samples)`` at the model's rate → logits ``(batch, n_labels)``.

    ``features`` → (crop/pad to ``num_frames`` when the config fixes it) → normalise → model.
    ``stft_mode="conv"`` swaps in the convolutional STFT for export (same numbers).
    """

    def __init__(self, model: nn.Module, config: dict[str, Any] | ModelConfig, *, stft_mode: str = "torch"):
        super().__init__()
        #: The saved config, read (strictly) into attributes; ``config``: its JSON form.
        self.model_config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        self.config = config.to_dict() if isinstance(config, ModelConfig) else config
        self.feature_config = self.model_config.features
        self.frontend = build_frontend(self.feature_config, stft_mode=stft_mode)
        self.normalize = Normalize(self.model_config.normalization, self.feature_config.n_features)
        self.model = model
        if self.streaming and self.feature_config.level_db is not None:
            raise ValueError("speech-level normalisation (level_db) needs the whole clip; a streaming model "
                             "runs frame by frame and cannot use it")
        self.labels: list[str] = list(self.model_config.labels)
        self.register_buffer("temperature", torch.tensor(float(self.model_config.temperature)), persistent=False)

    @property
    def streaming(self) -> bool:
        return is_streaming(self.model)

    @property
    def sample_rate_hz(self) -> int:
        return self.feature_config.sample_rate_hz

    def raw_features(self, wave: torch.Tensor, lengths_samples: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Un-normalised features ``(batch, F, T)`` and frame lengths (None when all equal): before
        speech-level normalisation (``level_db``) and standardisation, which :meth:`features` applies.

        ``lengths_samples`` gives each clip's real length in a zero-padded batch; frames past it
        are masked by the model's pooling (or skipped as all-zero frames by the streaming MFCC-LSTM's MFCC).
        """
        cfg = self.feature_config
        wave = pad_to_one_frame(wave, cfg)
        feats = self.frontend(wave)
        skip_zero = cfg.kind == "mfcc" and cfg.skip_zero_frames
        lengths = None
        if lengths_samples is not None and not skip_zero:
            lengths = frame_counts(lengths_samples, cfg).clamp(1, feats.shape[-1])
            if bool((lengths == feats.shape[-1]).all()):
                lengths = None
        if skip_zero:
            mask = nonzero_frame_mask(wave, cfg)
            if lengths_samples is not None:
                # in a zero-padded batch, a frame running past its clip's end does not exist for the
                # clip alone: drop it (its clip-only frame count is cfg.num_frames_for(n))
                n_real = frame_counts(lengths_samples, cfg)
                mask = mask & (torch.arange(mask.shape[-1])[None, :] < n_real[:, None])
            if not bool(mask.all()):
                feats, lengths = compact_frames(feats, mask)
        if cfg.num_frames is not None:  # crop/pad each clip's real frames, not the batch padding
            feats, lengths = fix_frames(feats, cfg.num_frames, cfg=cfg, lengths=lengths), None
        return feats, lengths

    def stream_features(self, wave: torch.Tensor, peak: float | None = None) -> torch.Tensor:
        """Raw features ``(1, F, frames)`` of a run of complete frames of a stream (``center=False``),
        all-zero frames dropped (possibly all of them) with ``skip_zero_frames``; ``peak``
        (``peak_normalize``): the peak of everything received so far."""
        cfg = self.feature_config
        feats = self.frontend(wave, torch.tensor([[peak]])) if cfg.peak_normalize else self.frontend(wave)
        if cfg.kind == "mfcc" and cfg.skip_zero_frames:
            feats = feats[:, :, nonzero_frame_mask(wave, cfg)[0]]
        return feats

    def features(self, wave: torch.Tensor, lengths_samples: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats, lengths = self.raw_features(wave, lengths_samples)
        return self.normalize_features(feats, lengths), lengths

    def normalize_features(self, raw: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Raw features → the model's input: speech-level normalisation (log-mel configs with
        ``level_db``), then standardisation with the training statistics."""
        return prepare_input(raw, self.feature_config, self.normalize, lengths)

    def forward_features(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised features ``(batch, F, T)`` → logits (the head stage, :func:`emovox.models.common.head_logits`)."""
        return head_logits(self.model, feats, lengths)

    def forward(self, wave: torch.Tensor, lengths_samples: torch.Tensor | None = None) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        feats, lengths = self.features(wave, lengths_samples)
        return self.forward_features(feats, lengths)

    @torch.no_grad()
    def probabilities(self, wave: torch.Tensor, lengths_samples: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.forward(wave, lengths_samples) / self.temperature, dim=-1)


# ---------------------------------------------------------------------------------------------
# Saving


def torch_saver(obj: Any) -> Callable[[str], None]:
    """A writer for :func:`emovox.atomic.write_files` that ``torch.save``s ``obj``: serialised in memory first, so a
    failing disk raises an ``OSError`` that names the problem (torch's own writer says "iostream error")."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return lambda tmp: Path(tmp).write_bytes(buf.getbuffer())


def save_model(out_dir: str | os.PathLike, model: nn.Module, config: dict[str, Any]) -> Path:
    """Write ``best_model.pth``, ``model_config.json`` and ``labels.json`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    write_files([(out / WEIGHTS_FILE, torch_saver(payload)),
                      (out / CONFIG_FILE, lambda t: Path(t).write_text(json.dumps(config, indent=2) + "\n")),
                      (out / LABELS_FILE, lambda t: Path(t).write_text(json.dumps(list(config["labels"]), indent=2)
                                                                       + "\n"))])
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def _read_checkpoint(path: Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file is empty: {path}")
    if not zipfile.is_zipfile(path) and not allow_pickle:
        raise ModelLoadError(f"{path}: not a PyTorch checkpoint (corrupt or truncated file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt or hostile files
        msg = str(e).splitlines()[0][:300]
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ModelLoadError(
                f"{path}: refuses to unpickle arbitrary Python objects (safe loading); this file is not an "
                f"emovox state-dict checkpoint. Only if you trust its source, load it with allow_pickle=True. ({msg})"
            ) from e
        raise ModelLoadError(f"{path}: cannot read checkpoint (corrupt or truncated?): {msg}") from e
    if isinstance(obj, nn.Module):
        raise ModelLoadError(f"{path}: holds a whole pickled model; emovox loads its state-dict checkpoints only")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: not an emovox model checkpoint (no '{FORMAT}' format marker)")
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: checkpoint format version {obj.get('format_version')} is newer than this emovox "
            f"({__version__}) understands ({FORMAT_VERSION}); upgrade emovox"
        )
    for key in ("config", "state_dict"):
        if key not in obj:
            raise ModelLoadError(f"{path}: checkpoint lacks '{key}'")
    return obj


def build_from_config(config: dict[str, Any] | ModelConfig, *, model_dir: str | os.PathLike | None = None
                      ) -> nn.Module:
    """``model_dir``: the folder the config came from (where an ssl model's bundled backbone lives)."""
    mc = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    return build_model(mc.model.name, n_features=mc.features.n_features, n_classes=len(mc.labels),
                       model_dir=model_dir, **mc.model.kwargs)


def _check_weights(weights: Path, state: dict[str, Any], config: ModelConfig) -> None:
    """Before a model is built: every saved tensor is finite, and (for models whose weights are all saved) the
    config's architecture, built on the meta device (no memory), has exactly the saved shapes, so a config
    that lies about its size cannot make emovox allocate it."""
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ModelLoadError(f"{weights}: state_dict entry {key!r} is a {type(t).__name__}, not a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelLoadError(f"{weights}: weight {key!r} holds NaN or infinite values (a diverged or damaged "
                                 f"model)")
    if config.model.name == "ssl":  # its frozen backbone is referenced, not saved, and loads from its own source
        return
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_from_config(config).state_dict().items()}
    except Exception as e:  # noqa: BLE001 - any failure here is a config that cannot build
        raise ModelLoadError(f"{weights}: invalid model config: {e}") from e
    for key in sorted(set(shapes) | set(state)):
        saved = tuple(state[key].shape) if key in state else None
        if saved != shapes.get(key):
            raise ModelLoadError(f"{weights}: weights do not match the model config: {key!r} is "
                                 f"{saved if saved is not None else 'missing'} in the file, "
                                 f"{shapes.get(key, 'absent')} in the config's architecture")


def _folder_hint(p: Path) -> str:
    """What a non-emovox model folder looks like, for the error message."""
    if (p / "config.json").is_file():
        return (" (it holds a Hugging Face config.json: classify, stream and serve take such folders through "
                "emovox.load_model; this command needs an emovox model)")
    if (p / "hyperparams.yaml").is_file():
        return (" (it holds a SpeechBrain checkpoint: classify, stream and serve take SpeechBrain's wav2vec2 emotion "
                "recipe folders through emovox.load_model; this command needs an emovox model)")
    return ""


@dataclass
class LoadedModel:
    pipeline: EmotionPipeline
    config: dict[str, Any]
    path: Path

    @property
    def model_config(self) -> ModelConfig:
        """The config as attributes (:class:`~emovox.model_config.ModelConfig`)."""
        return self.pipeline.model_config


def load_model_dir(path: str | os.PathLike, *, stft_mode: str = "torch", allow_pickle: bool = False) -> LoadedModel:
    """Load a model folder (or its ``best_model.pth``) into an eval-mode :class:`EmotionPipeline`."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model not found: {p}")
    weights = p / WEIGHTS_FILE if p.is_dir() else p
    if p.is_dir() and not weights.exists():
        raise ModelLoadError(f"{p}: not an emovox model folder (missing {WEIGHTS_FILE}){_folder_hint(p)}")
    if p.is_dir() and not weights.resolve().is_relative_to(p.resolve()):
        raise ModelLoadError(f"{weights}: a symbolic link to {weights.resolve()}, outside the model folder; emovox "
                             f"reads only files inside it: copy the file in")
    ckpt = _read_checkpoint(weights, allow_pickle=allow_pickle)
    config = ckpt["config"]
    mc = ModelConfig.from_dict(config, source=weights)
    _check_weights(weights, ckpt["state_dict"], mc)
    try:
        model = build_from_config(mc, model_dir=weights.parent)
    except ModelLoadError as e:  # e.g. an ssl model's backbone that cannot be found: the message says it all
        raise ModelLoadError(f"{weights}: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{weights}: invalid model config: {e}") from e
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ModelLoadError(f"{weights}: weights do not match the model config: {str(e).splitlines()[0]}") from e
    pipeline = EmotionPipeline(model, config, stft_mode=stft_mode).eval()
    with torch.no_grad():
        probe = pipeline.forward(torch.zeros(1, pipeline.feature_config.samples_for(8)))
    if probe.shape[-1] != len(pipeline.labels):
        raise ModelLoadError(
            f"{weights}: model has {probe.shape[-1]} outputs but {len(pipeline.labels)} labels {pipeline.labels}"
        )
    return LoadedModel(pipeline=pipeline, config=config, path=weights.parent)

"""Inference: one clip, many clips, long-recording timelines, and streaming; model loading and the backends.

The answers are in :mod:`emovox.runtime.answers`, streaming in :mod:`emovox.runtime.streaming`.

>>> import emovox
>>> model = emovox.load_model()                # the shipped default model
>>> p = model.predict("clip.wav")              # path, bytes, file object, or (array, rate)
>>> p.label, p.score, p.scores                 # top emotion, its probability, every label's

Scores are calibrated probabilities (temperature scaling fitted on held-out validation data at
training time). ``labels=`` folds them into another label set (``"basic5"`` for the Core ML mobile CNN's app,
``"app6"`` for the streaming MFCC-LSTM's front-end, or a mapping), summing probability mass.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from emovox.audio import RESAMPLE_QUALITY, AudioError, check_resample_quality, is_silent, load_audio
from emovox.data.labels import FOLD_FALLBACKS, LabelMap
from emovox.defaults import (
    CONFIDENCE_THRESHOLD,
    MAX_CLIP_S,
    MAX_SERVED_CLIP_S,
    MIN_ADAPTATION_CLIPS,
    RUNTIME_DIR,
)
from emovox.degrade.quality import check_quality_temperature, measure_quality, temperature_factor
from emovox.errors import AdaptationError, ModelLoadError
from emovox.runtime.answers import Prediction, Timeline, merge_segments, retemper, softmax
from emovox.runtime.streaming import StreamingSession

DEFAULT_MODEL = "default"
#: A model folder's ONNX Runtime graphs (:mod:`emovox.export.runtime_build`).


class Backend(Protocol):
    """What a model runtime provides: PyTorch (:class:`TorchBackend`) or onnxruntime."""

    labels: list[str]
    sample_rate_hz: int
    temperature: float

    def predict_logits(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray: ...


class TorchBackend:
    def __init__(self, loaded):
        import torch

        from emovox.models.common import fuse_conv_bn

        self._torch = torch
        self.loaded = loaded
        self.pipeline = loaded.pipeline.eval()
        fuse_conv_bn(self.pipeline)  # same function, one pass less per block
        # 2-D convolutions and pools run ~3x faster on a CPU in NHWC (oneDNN's native layout); the
        # models that use them (crnn) hand their input over in that layout too. Same numbers.
        self.pipeline.to(memory_format=torch.channels_last)
        self.labels = list(self.pipeline.labels)
        self.sample_rate_hz = self.pipeline.sample_rate_hz
        self.temperature = float(self.pipeline.temperature)
        self.config = loaded.config
        self.streaming = bool(self.pipeline.streaming)

    def frame_stepper(self) -> TorchFrameStepper | None:
        """What a stream steps frame by frame (streaming models with frame-local features), else None."""
        pipe = self.pipeline
        return TorchFrameStepper(pipe) if pipe.streaming and not pipe.feature_config.center else None

    def predict_logits(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(waves, dtype=np.float32))
            n = None if lengths is None else torch.from_numpy(np.asarray(lengths, dtype=np.int64))
            return self.pipeline(x, n).numpy()


class TorchFrameStepper:
    """One streaming step on PyTorch: the complete frames of some samples → logits after every frame."""

    def __init__(self, pipeline):
        cfg = pipeline.feature_config
        self.pipeline = pipeline
        self.hop_length, self.frame_span, self.peak_normalize = cfg.hop_length, cfg.frame_span, cfg.peak_normalize
        self.num_frames_for, self.samples_for = cfg.num_frames_for, cfg.samples_for

    def step(self, wave: np.ndarray, peak: float, state) -> tuple[np.ndarray, Any]:
        """``wave``: whole frames of samples; ``peak``: the stream's peak so far (``peak_normalize``
        features); ``state``: the previous step's (None to start) → ``(logits (frames, n_labels), state)``;
        frames skipped as all-zero (``skip_zero_frames``) give no row and leave the state as it was."""
        import torch

        from emovox.modelio import streaming_step

        pipe = self.pipeline
        with torch.inference_mode():
            feats = pipe.stream_features(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None], peak)
            if feats.shape[-1] == 0:
                return np.zeros((0, len(pipe.labels)), np.float32), state
            logits, state = streaming_step(pipe, feats, state, every_frame=True)
        return logits[0].numpy(), state



class EmotionModel:
    """A loaded speech emotion model (PyTorch or ONNX backend) with a clip-level API."""

    def __init__(self, backend: Backend, *, name: str = "", path: Path | None = None,
                 threshold: float = CONFIDENCE_THRESHOLD, max_duration_s: float | None = MAX_CLIP_S):
        self.backend = backend
        self.name = name
        self.path = path
        self.threshold = threshold
        self.max_duration_s = max_duration_s
        self._maps: dict[Any, LabelMap] = {}
        try:  # the ONNX backend reads model_config.json as it is: check it here too
            self.quality_temperature = check_quality_temperature(self.config.get("quality_temperature"),
                                                                 f"{path or name}: ")
            self.resample_quality = check_resample_quality(self.config.get("resample_quality", RESAMPLE_QUALITY),
                                                           f"{path or name}: ")
        except ValueError as e:
            raise ModelLoadError(str(e)) from e

    # -- properties
    @property
    def labels(self) -> list[str]:
        return list(self.backend.labels)

    @property
    def sample_rate_hz(self) -> int:
        return self.backend.sample_rate_hz

    @property
    def config(self) -> dict[str, Any]:
        return getattr(self.backend, "config", {})

    @property
    def streaming(self) -> bool:
        """Whether the model runs frame by frame (a stream steps it with its state carried over)."""
        return bool(getattr(self.backend, "streaming", False))

    def output_labels(self, labels=None) -> list[str]:
        return list(self._label_map(labels).target) if labels is not None else self.labels

    def __repr__(self) -> str:
        return f"EmotionModel(name={self.name!r}, labels={self.labels})"

    # -- label folding
    def _label_map(self, labels) -> LabelMap:
        key = labels if isinstance(labels, (str, tuple)) or labels is None else repr(labels)
        if key not in self._maps:
            lm = LabelMap.build(self.labels, labels, fallbacks=FOLD_FALLBACKS)
            if not lm.lossless:
                lm.fold(np.zeros(len(self.labels)))  # raises LabelError naming the unmapped labels
            self._maps[key] = lm
        return self._maps[key]

    def unsupported_labels(self, labels=None) -> list[str]:
        """Labels of ``labels=`` that this model cannot express (e.g. ``calm`` in ``ravdess8`` for a model
        without it): their folded probability is always 0."""
        return list(self._label_map(labels).unreachable) if labels is not None else []

    def _answer(self, probs: np.ndarray, wave: np.ndarray, labels=None) -> Prediction:
        """A clip's prediction with its silence flag and measured quality."""
        return self._to_prediction(probs, labels, silent=is_silent(wave),
                                   quality=measure_quality(wave, self.sample_rate_hz))

    def _to_prediction(self, probs: np.ndarray, labels=None, *, silent: bool = False, quality=None) -> Prediction:
        """The answer from calibrated probabilities; with the recording's ``quality``, at the temperature for its
        issues (the model's ``quality_temperature``)."""
        probs = retemper(probs, temperature_factor(quality, self.quality_temperature))
        unsupported: tuple[str, ...] = ()
        if labels is not None:
            lm = self._label_map(labels)
            probs, names, unsupported = lm.fold(probs), list(lm.target), lm.unreachable
        else:
            names = self.labels
        i = int(np.argmax(probs))
        return Prediction(label=names[i], score=float(probs[i]),
                          scores={n: float(p) for n, p in zip(names, probs)}, threshold=self.threshold,
                          silent=silent, unsupported_labels=unsupported, quality=quality)

    # -- audio
    def load(self, source, *, sample_rate_hz: int | None = None) -> np.ndarray:
        return load_audio(source, sample_rate_hz=self.sample_rate_hz, source_sample_rate_hz=sample_rate_hz,
                          max_duration_s=self.max_duration_s, resample_quality=self.resample_quality)

    def probabilities(self, waves: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
        """Calibrated probabilities ``(n, n_labels)`` for decoded clips; similar lengths are batched."""
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float64)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            lens = np.array([len(waves[i]) for i in idx])
            batch = np.zeros((len(idx), int(lens.max())), dtype=np.float32)
            for j, i in enumerate(idx):
                batch[j, : lens[j]] = waves[i]
            logits = self.backend.predict_logits(batch, None if (lens == lens[0]).all() else lens)
            out[idx] = softmax(logits, self.backend.temperature)
        return out

    def predict(self, source, *, sample_rate_hz: int | None = None, labels=None) -> Prediction:
        """Classify one clip: a path, bytes, a binary file object, or an array with ``sample_rate_hz``."""
        wave = self.load(source, sample_rate_hz=sample_rate_hz)
        return self._answer(self.probabilities([wave])[0], wave, labels)

    def predict_batch(self, sources: Iterable, *, sample_rate_hz: int | None = None, labels=None,
                      batch_size: int = 16, num_workers: int | None = None, errors: str = "raise",
                      progress: bool = False, adapt: bool = False) -> list[Prediction | AudioError]:
        """Classify many clips: decoded and featurised in parallel, run in mini-batches.

        ``errors="raise"`` stops at the first unreadable clip; ``errors="return"`` puts the
        :class:`~emovox.audio.AudioError` in that clip's place and goes on. ``adapt=True`` (linear-probe models
        such as the default, on ONNX Runtime) standardises the pooled features with the statistics of these clips
        themselves instead of the training clips' (what ``emovox adapt`` does, without a new folder): for a folder
        of one domain (one microphone, room, language or corpus), at least ``MIN_ADAPTATION_CLIPS`` clips.
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        sources = list(sources)
        self._label_map(labels) if labels is not None else None
        if adapt:
            self._check_adaptable()
        results: list[Prediction | AudioError | None] = [None] * len(sources)
        pooled: list[tuple[int, np.ndarray, Any, bool]] = []  # adapt: (index, pooled row, quality, silent)
        for start, waves in self._decoded_chunks(sources, sample_rate_hz, batch_size, num_workers, errors, progress):
            ok = [i for i, w in enumerate(waves) if not isinstance(w, AudioError)]
            for i, w in enumerate(waves):
                if isinstance(w, AudioError):
                    results[start + i] = w
            if adapt:
                pooled += [(start + i, self.backend.pooled_features(waves[i])[0],
                            measure_quality(waves[i], self.sample_rate_hz), is_silent(waves[i])) for i in ok]
                continue
            probs = self.probabilities([waves[i] for i in ok], batch_size=batch_size) if ok else []
            for j, i in enumerate(ok):
                results[start + i] = self._answer(probs[j], waves[i], labels)
        if adapt:
            for (i, _, quality, silent), probs in zip(pooled, self._adapted_probabilities([r for _, r, _, _ in pooled])):
                results[i] = self._to_prediction(probs, labels, silent=silent, quality=quality)
        return results  # type: ignore[return-value]

    def _decoded_chunks(self, sources: list, sample_rate_hz, batch_size: int, num_workers, errors: str,
                        progress: bool):
        """``(start, decoded waves or AudioErrors)`` chunk by chunk; the next chunk decodes while the caller
        works on this one (at most 2 chunks in memory)."""
        workers = num_workers or min(8, os.cpu_count() or 2)
        bar = None
        if progress and len(sources) > batch_size:
            from tqdm import tqdm

            bar = tqdm(total=len(sources), unit="clip", desc="classify")

        def _load(s):
            try:
                return self.load(s, sample_rate_hz=sample_rate_hz)
            except AudioError as e:
                if errors == "raise":
                    raise
                return e

        chunk = max(batch_size * 4, 64)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = [pool.submit(_load, s) for s in sources[:chunk]]
            for start in range(0, len(sources), chunk):
                waves = [f.result() for f in pending]
                pending = [pool.submit(_load, s) for s in sources[start + chunk : start + 2 * chunk]]
                yield start, waves
                if bar is not None:
                    bar.update(len(waves))
        if bar is not None:
            bar.close()

    def _check_adaptable(self) -> None:
        if getattr(self.backend, "pooled_output", None) is None:
            raise AdaptationError(
                f"adapting to the inputs re-standardises a linear-probe model's pooled features (the default model "
                f"on ONNX Runtime); {self.name or 'this model'} on the {type(self.backend).__name__} backend has no "
                "pooled features: classify without --adapt, or use the default model with backend 'auto'")

    def _adapted_probabilities(self, rows: list[np.ndarray]) -> np.ndarray:
        """Probabilities from pooled rows standardised with their own mean and standard deviation."""
        if len(rows) < MIN_ADAPTATION_CLIPS:
            raise AdaptationError(
                f"adapting to the inputs needs at least {MIN_ADAPTATION_CLIPS} readable clips of one domain (their "
                f"statistics replace the training clips'), got {len(rows)}: classify without --adapt")
        x = np.stack(rows).astype(np.float64)
        probe = self.backend.probe_parameters()
        z = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-3)  # as emovox adapt fits them
        return softmax(z @ probe["weight"].T.astype(np.float64) + probe["bias"], self.backend.temperature)

    def timeline(self, source, *, sample_rate_hz: int | None = None, window_s: float = 3.0, hop_s: float = 1.0,
                 labels=None, batch_size: int = 16, speech_only: bool = False) -> Timeline:
        """Sliding-window predictions over a long recording, merged into segments. ``speech_only``: windows
        without speech (Silero VAD, :mod:`emovox.segments`) are not classified: ``None`` in ``windows``,
        ``"speech": false`` in the output."""
        if window_s <= 0 or hop_s <= 0:
            raise ValueError(f"window_s and hop_s must be positive (got {window_s}, {hop_s})")
        wave = self.load(source, sample_rate_hz=sample_rate_hz)
        sr = self.sample_rate_hz
        duration = len(wave) / sr
        win, hop = int(round(window_s * sr)), int(round(hop_s * sr))
        starts = [0] if len(wave) <= win else list(range(0, len(wave) - win + 1, hop))
        if len(wave) > win and starts[-1] + win < len(wave):
            starts.append(len(wave) - win)  # cover the tail
        chunks = [wave[s : s + win] for s in starts]
        keep = [True] * len(chunks)
        if speech_only:
            from emovox.segments.windows import speech_windows

            keep = speech_windows(wave, sr, starts, win)
        probs = iter(self.probabilities([c for c, k in zip(chunks, keep) if k], batch_size=batch_size))
        windows = [(s / sr, (s + len(c)) / sr, self._answer(next(probs), c, labels) if k else None)
                   for s, c, k in zip(starts, chunks, keep)]
        return Timeline(duration_s=duration, window_s=window_s, hop_s=hop_s, windows=windows,
                        segments=merge_segments(windows, duration))

    def segments(self, source, *, sample_rate_hz: int | None = None, labels=None, batch_size: int = 16,
                 max_duration_s: float | None = None, progress: bool = False, options=None, **option_values):
        """Speech segments of a recording of any length (voice activity detection, decoded in blocks), each
        classified as a whole → :class:`emovox.segments.SegmentedRecording` (no segments, and a ``message``,
        when there is no speech). ``options``: a :class:`emovox.segments.SegmentOptions`, or its fields as
        keywords (``min_speech_ms``, ``min_silence_ms``, ``speech_pad_ms``, ``max_segment_s``, ``threshold``)."""
        from emovox.segments import SegmentOptions, classify_segments

        options = options if options is not None else SegmentOptions(**option_values)
        return classify_segments(self, source, sample_rate_hz=sample_rate_hz, labels=labels, batch_size=batch_size,
                                 options=options, max_duration_s=max_duration_s, progress=progress)

    def stream(self, *, labels=None, window_s: float = 3.0, max_buffer_s: float = MAX_SERVED_CLIP_S,
               final_answer: str = "last") -> StreamingSession:
        """An incremental session (:class:`StreamingSession`); ``final_answer`` ``"last"`` or
        ``"mean"`` (models that run frame by frame)."""
        return StreamingSession(self, labels=labels, window_s=window_s, max_buffer_s=max_buffer_s,
                                final_answer=final_answer)



def _assets_root():
    return resources.files("emovox") / "assets" / "models"


def available_models() -> list[dict[str, Any]]:
    """The models shipped inside the package: name, labels, description."""
    import json

    out = []
    root = _assets_root()
    if not root.is_dir():
        return out
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        cfg = entry / "model_config.json"
        if entry.is_dir() and cfg.is_file():
            c = json.loads(cfg.read_text())
            out.append({"name": entry.name, "labels": c.get("labels", []), "model": c.get("model", {}).get("name"),
                        "features": c.get("features", {}).get("kind"),
                        "description": c.get("description", "")})
    return out


def resolve_model_path(name_or_path: str | os.PathLike | None) -> tuple[str, Path]:
    """A shipped model's name (``None`` = default) or a path → (name, folder)."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    p = Path(name_or_path)
    if p.exists():
        return p.name, p
    shipped = _assets_root() / str(name_or_path)
    if shipped.is_dir():
        with resources.as_file(shipped) as folder:
            return str(name_or_path), Path(folder)
    names = [m["name"] for m in available_models()]
    raise ModelLoadError(
        f"model {str(name_or_path)!r} is neither a folder nor a shipped model; shipped models: "
        f"{', '.join(names) or '(none)'}"
    )


BACKENDS = ("auto", "onnx", "torch")


def load_model(name_or_path: str | os.PathLike | None = None, *, backend: str = "auto",
               threshold: float = CONFIDENCE_THRESHOLD, max_duration_s: float | None = MAX_CLIP_S,
               allow_pickle: bool = False, threads: int | None = None) -> EmotionModel:
    """Load the default shipped model (``None``), a shipped model by name, a trained model folder, an
    ``emovox export`` folder, or a Hugging Face audio-classification folder (:mod:`emovox.pretrained.hf_audio`).

    ``backend``: ``"auto"`` runs the model's ONNX Runtime graphs (``<model>/onnx/``: the shipped models have
    them) when onnxruntime is installed, without importing PyTorch, and PyTorch otherwise; ``"onnx"`` insists
    on ONNX Runtime (a model folder with ``onnx/``, or an ``emovox export`` folder or ``.onnx`` file);
    ``"torch"`` runs the PyTorch model (training installs; the reference for parity checks).
    ``threads``: ONNX Runtime's threads (default: the cores this process may use).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    common = {"threshold": threshold, "max_duration_s": max_duration_s}
    if backend == "onnx" and name_or_path is not None and not _is_shipped(name_or_path):
        p = Path(name_or_path)
        if not p.exists():
            raise FileNotFoundError(f"--backend onnx needs a model folder, an exported ONNX folder or a .onnx file, "
                                    f"got {name_or_path!r}")
        if not (p / RUNTIME_DIR).is_dir():
            from emovox.runtime.onnx_backend import OnnxModel

            return EmotionModel(OnnxModel(p, threads=threads), name=p.name, path=p, **common)
    name, folder = resolve_model_path(name_or_path)
    if backend != "torch" and (folder / RUNTIME_DIR / "runtime.json").is_file() and _has_onnxruntime():
        from emovox.runtime.onnx_backend import OnnxModel, stale_reason

        why = stale_reason(folder)
        if why is None:
            return EmotionModel(OnnxModel(folder / RUNTIME_DIR, threads=threads), name=name, path=folder, **common)
        _refuse_stale_graph(folder, why, backend)
    if backend == "onnx":
        raise ModelLoadError(f"{folder}: no ONNX Runtime graphs here ({RUNTIME_DIR}/runtime.json) or onnxruntime is "
                             "not installed; build them with `python -m tools.ship_model` or run backend='torch'")
    return _load_torch(name, folder, allow_pickle=allow_pickle, **common)


def _refuse_stale_graph(folder: Path, why: str, backend: str) -> None:
    """A runtime graph that may not be this folder's model is never used: ``backend="onnx"`` is refused, and
    ``"auto"`` answers with PyTorch (with a warning) where it is installed, else is refused."""
    import importlib.util
    import warnings

    fix = f"rebuild it with `emovox export --model {folder} --runtime`"
    if backend == "onnx" or importlib.util.find_spec("torch") is None:
        raise ModelLoadError(f"{folder}: {why}; {fix} (needs emovox[export]), or run --backend torch")
    warnings.warn(f"{folder}: {why}; answering with PyTorch instead; {fix}", stacklevel=3)


def _is_shipped(name_or_path) -> bool:
    return not Path(name_or_path).exists() and (_assets_root() / str(name_or_path)).is_dir()


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _load_torch(name: str, folder: Path, *, allow_pickle: bool, **common) -> EmotionModel:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise ModelLoadError(f"{folder}: this model runs on PyTorch (it has no {RUNTIME_DIR}/ graphs for ONNX "
                             "Runtime), which is not installed: pip install 'emovox[train]'")
    from emovox.modelio import load_model_dir
    from emovox.pretrained.hf_audio import HFAudioBackend, is_hf_audio_folder

    if is_hf_audio_folder(folder):  # a Hugging Face audio-classification checkpoint (save_pretrained)
        return EmotionModel(HFAudioBackend(folder), name=name, path=folder, **common)
    from emovox.pretrained.speechbrain_ckpt import SpeechBrainBackend, is_speechbrain_folder

    if is_speechbrain_folder(folder):  # SpeechBrain's wav2vec2 emotion recipe (seed 004's audio checkpoint)
        return EmotionModel(SpeechBrainBackend(folder), name=name, path=folder, **common)
    loaded = load_model_dir(folder, allow_pickle=allow_pickle)
    return EmotionModel(TorchBackend(loaded), name=name, path=folder, **common)


__all__ = ["BACKENDS", "EmotionModel", "available_models", "load_model", "resolve_model_path"]

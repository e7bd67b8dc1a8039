"""The models a service answers with, loaded once at start-up; and the mock models.

:func:`load_services` loads the speech model (required: without one the service refuses to
start, with the loader's message) and the text model (optional: when none is configured or
shipped, text is reported unavailable and ``/predict-text/`` answers 503). With
``USE_MOCK_MODELS=true`` both are replaced by deterministic fakes whose answers depend only on
the input (a hash of the decoded samples, or of the text); every answer then says ``"mock": true``.
With ``USE_MOCK_MODELS=auto`` real models load as usual, and only a model that cannot be loaded
is replaced by its mock (a loud warning in the log; its answers say ``"mock": true``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emovox.data.labels import EKMAN7, GOEMOTIONS28
from emovox.defaults import WEIGHTS_FILE
from emovox.errors import ModelLoadError
from emovox.inference import EmotionModel, load_model
from emovox.server.settings import Settings

log = logging.getLogger(__name__)

MOCK_LABELS = list(EKMAN7)


@dataclass
class Services:
    audio: EmotionModel
    audio_info: dict[str, Any]
    text: Any = None  # an emovox.text.TextModel, or None
    text_info: dict[str, Any] = field(default_factory=lambda: {"available": False, "reason": "not loaded"})
    #: the speech model is a mock (its answers carry "mock": true)
    mock: bool = False
    #: the text model is a mock
    text_mock: bool = False
    #: seconds each model took to load ("speech", "text")
    load_s: dict[str, float] = field(default_factory=dict)

    @property
    def any_mock(self) -> bool:
        return self.mock or self.text_mock


def _sha256_prefix(path: Path, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:n]


def _audio_info(model: EmotionModel, *, mock: bool = False) -> dict[str, Any]:
    cfg = model.config or {}
    version = "mock"
    if not mock and model.path is not None:
        weights = getattr(model.backend, "weights_file", None) or Path(model.path) / WEIGHTS_FILE
        version = _sha256_prefix(weights) if weights.is_file() else "unknown"
    return {
        "name": model.name,
        "kind": (cfg.get("model") or {}).get("name", "unknown"),
        "version": version,
        "emovox_version": cfg.get("emovox_version"),
        "labels": model.labels,
        "sample_rate_hz": model.sample_rate_hz,
        "streaming": model.streaming,
    }


def load_services(settings: Settings, *, text_in_background: bool = False) -> Services:
    """Load the models the settings name. Raises :class:`ModelLoadError` when the service cannot run.

    ``USE_MOCK_MODELS=true``: both models are mocks. ``auto``: each model that cannot be loaded (the
    speech model, or a text model when none loads) is replaced by its mock, with a loud warning.
    ``text_in_background``: the shipped default text model is left for :func:`finish_loading_text`
    (``emovox serve`` answers speech requests while it loads).
    """
    t0 = time.perf_counter()
    services = _load_speech(settings)
    t1 = time.perf_counter()
    if text_in_background and text_can_wait(settings):
        services.text_info = {"available": False, "loading": True, "reason": "the text model is still loading"}
        services.load_s = {"speech": t1 - t0}
        return services
    services = _load_text(settings, services)
    services.load_s = {"speech": t1 - t0, "text": time.perf_counter() - t1}
    return services


def text_can_wait(settings: Settings) -> bool:
    """Whether the text model may load after the service is up: the shipped default text model only (a
    configured ``TEXT_MODEL_DIR`` that fails must stop the start with its error, as it always has)."""
    return settings.use_mock_models is False and not settings.text_disabled and settings.text_model is None


def finish_loading_text(settings: Settings, services: Services) -> None:
    """Load the text model into ``services`` (``load_services(..., text_in_background=True)`` left it loading):
    text requests answer 503 until then; a failure leaves text unavailable and the speech service serving."""
    t = time.perf_counter()
    loaded = Services(services.audio, services.audio_info)
    try:
        _load_text(settings, loaded)
    except Exception as e:  # noqa: BLE001 - whatever breaks, speech keeps serving
        log.error("the text model failed to load; text requests answer 503: %s", e)
        loaded.text, loaded.text_info = None, {"available": False, "reason": f"the text model failed to load: {e}"}
    services.text_mock, services.text_info = loaded.text_mock, loaded.text_info
    services.text = loaded.text  # last: a request that sees the model also sees its info
    services.load_s["text"] = time.perf_counter() - t
    log.info("text model %s in %.1f s", "loaded" if loaded.text is not None else "unavailable", services.load_s["text"])


def _where_from(settings: Settings, key: str) -> str:
    """Where a model setting came from and, for a relative path, what it was resolved against (for messages)."""
    value = getattr(settings, key)
    origin = settings.origins.get(key)
    if value is None or origin is None:
        return ""
    resolved = "" if Path(value).is_absolute() else \
        f", a relative path resolved against the working folder {Path.cwd()} (as {Path.cwd() / value})"
    return f" ({value!r} came from {origin}{resolved})"


def _load_speech(settings: Settings) -> Services:
    """The speech model (or its mock), in Services without a text model yet."""
    if settings.use_mock_models is True:
        log.warning("USE_MOCK_MODELS is on: answers are deterministic fakes, labelled \"mock\": true")
        audio = mock_audio_model(threshold=settings.threshold, max_duration_s=settings.max_duration_s)
        return Services(audio, _audio_info(audio, mock=True), mock=True)
    try:
        audio = load_model(settings.model, threshold=settings.threshold, max_duration_s=settings.max_duration_s,
                           threads=settings.torch_threads)
        audio_info, audio_mock = _audio_info(audio), False
    except (ModelLoadError, FileNotFoundError) as e:
        if not settings.mock_auto:
            raise ModelLoadError(
                f"cannot start the service without a speech model: {e}{_where_from(settings, 'model')}. Give one with --model or AUDIO_MODEL_DIR "
                "(a model folder written by `emovox train`, a Hugging Face audio-classification folder, or a "
                "shipped model's name); for front-end development only, USE_MOCK_MODELS=true serves deterministic "
                "fake answers labelled \"mock\": true (USE_MOCK_MODELS=auto: only when no model loads)"
            ) from e
        _warn_mock("speech", str(e))
        audio, audio_mock = mock_audio_model(threshold=settings.threshold, max_duration_s=settings.max_duration_s), True
        audio_info = {**_audio_info(audio, mock=True), "mock_reason": str(e)}
    return Services(audio, audio_info, mock=audio_mock)


def _load_text(settings: Settings, services: Services) -> Services:
    """``services`` with the text model the settings name (or its mock, or none)."""
    if settings.use_mock_models is True:
        if settings.text_disabled:
            text, text_info = None, {"available": False, "reason": "text model switched off (TEXT_MODEL_DIR=none)"}
        else:
            text, text_info = _mock_text()
        text_mock = text is not None
    elif settings.mock_auto:
        text, text_info, text_mock = _text_or_mock(settings)
    else:
        (text, text_info), text_mock = load_text(settings), False
    services.text, services.text_info, services.text_mock = text, text_info, text_mock
    return services


def _warn_mock(what: str, reason: str) -> None:
    bar = "!" * 78
    log.warning("\n%s\nUSE_MOCK_MODELS=auto: NO REAL %s MODEL COULD BE LOADED; SERVING A MOCK.\n"
                "Its answers are deterministic fakes, labelled \"mock\": true. Why: %s\n%s",
                bar, what.upper(), reason, bar)


def _text_or_mock(settings: Settings) -> tuple[Any, dict[str, Any], bool]:
    """``USE_MOCK_MODELS=auto``: the text model, else (unless text is switched off) its mock."""
    if settings.text_disabled:
        return (*load_text(settings), False)
    try:
        text, info = load_text(settings)
    except ModelLoadError as e:
        text, reason = None, str(e)
    else:
        reason = info.get("reason", "")
    if text is not None:
        return text, info, False
    _warn_mock("text", reason)
    text, info = _mock_text()
    return text, {**info, "mock_reason": reason}, text is not None


def _mock_text() -> tuple[Any, dict[str, Any]]:
    try:
        text = MockTextModel.create()
    except ImportError as e:
        return None, {"available": False, "reason": f"text mock needs emovox.text, which is not importable ({e})"}
    return text, {"available": True, "name": "mock", "version": "mock", "labels": list(text.labels), "mock": True}


def load_text(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """The text model: the configured folder (errors are fatal), else the shipped default if any."""
    if settings.text_disabled:
        return None, {"available": False, "reason": "text model switched off (TEXT_MODEL_DIR=none)"}
    try:
        from emovox.text import TextModelError, default_model_path, load_text_model, model_path
    except ImportError as e:  # text extras not installed
        if settings.text_model is not None:
            raise ModelLoadError(f"TEXT_MODEL_DIR is set but emovox.text cannot be imported: {e}") from e
        return None, {"available": False, "reason": f"emovox.text is not importable ({e}); pip install 'emovox[text]'"}
    if settings.text_model is None:
        try:
            path = default_model_path()
        except TextModelError as e:
            return None, {"available": False, "reason": f"no text model configured (TEXT_MODEL_DIR) and {e}"}
    else:
        try:
            path = model_path(settings.text_model)  # a folder or a shipped name (mpnet, ensemble)
        except TextModelError as e:
            raise ModelLoadError(f"cannot load the text model {settings.text_model!r}: {e}") from e
    try:
        model = load_text_model(path, threads=settings.torch_threads)  # ONNX Runtime threads (torch: ignored)
    except (TextModelError, OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the text model {str(path)!r}: {e} (TEXT_MODEL_DIR=none switches text off)") from e
    weights = model.weights_path
    version = _sha256_prefix(weights) if weights.is_file() else "unknown"
    return model, {"available": True, "name": Path(model.path).name, "version": version,
                   "labels": list(model.labels)}


# ---------------------------------------------------------------------------------------------
# Mock models (USE_MOCK_MODELS=true)


def _seed(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


class MockBackend:
    """A model runtime whose logits come from a hash of each clip's samples: same clip, same answer."""

    sample_rate_hz = 16000
    temperature = 1.0
    config = {"model": {"name": "mock"}, "emovox_version": None}

    def __init__(self, labels: list[str] = MOCK_LABELS):
        self.labels = list(labels)

    def predict_logits(self, waves: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        out = np.zeros((len(waves), len(self.labels)), dtype=np.float32)
        for i, w in enumerate(waves):
            n = len(w) if lengths is None else int(lengths[i])
            rng = np.random.default_rng(_seed(np.ascontiguousarray(w[:n], dtype=np.float32).tobytes()))
            out[i] = rng.normal(0.0, 2.0, len(self.labels))
        return out


def mock_audio_model(*, threshold: float, max_duration_s: float) -> EmotionModel:
    return EmotionModel(MockBackend(), name="mock", path=None, threshold=threshold, max_duration_s=max_duration_s)


def _mock_text_class():
    from emovox.text import TextModel

    class _MockTextModel(TextModel):
        """GoEmotions' 28 labels with scores from a hash of each text (no encoder is loaded)."""

        def probabilities(self, texts, *, batch_size: int = 64):
            probs = np.stack([
                1.0 / (1.0 + np.exp(-np.random.default_rng(_seed(t.encode("utf-8"))).normal(-2.0, 1.5, len(self.labels))))
                for t in texts
            ])
            n_tokens = np.array([len(t.split()) for t in texts], dtype=np.int64)
            return probs, n_tokens, np.zeros(len(texts), dtype=bool)

    return _MockTextModel


class MockTextModel:
    @staticmethod
    def create():
        cls = _mock_text_class()
        labels = list(GOEMOTIONS28)
        cfg = {"labels": labels, "thresholds": dict.fromkeys(labels, 0.5), "global_threshold": 0.5, "top_k": 0,
               "always_one": False, "max_length": 128, "encoder": {"name": "mock"}, "head": {}}
        return cls(Path("mock"), cfg)

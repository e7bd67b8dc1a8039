"""Service settings: from ``emovox serve`` flags, the environment and a ``.env`` file.

Precedence: flags win over environment variables, which win over the ``.env`` file in the
working directory (``KEY=value`` lines, ``#`` comments, quotes and ``export`` allowed: read with
python-dotenv; ``EMOVOX_ENV_FILE`` or ``emovox serve --env-file PATH`` names another file, ``none`` none).

| variable | default | what |
|---|---|---|
| ``AUDIO_MODEL_DIR`` | shipped default | speech model: a model folder, a shipped model's name, or a Hugging Face audio-classification folder |
| ``TEXT_MODEL_DIR`` | shipped default if any | text model folder (emovox's, or a Hugging Face sequence classifier); ``none`` switches text off |
| ``CONFIDENCE_THRESHOLD`` | 0.70 | top scores below it are flagged ``low_confidence``, with a ``warning`` |
| ``EMOVOX_MAX_UPLOAD_MB`` | 25 | largest request body (MiB), enforced while reading; also the largest WebSocket frame |
| ``EMOVOX_MAX_PARTS`` | 16 | most parts of a multipart upload, enforced while parsing |
| ``EMOVOX_MAX_DURATION_S`` | 600 | longest clip (and longest WebSocket stream), seconds |
| ``EMOVOX_API_KEY`` | unset | when set, API calls need ``X-API-Key`` or ``Authorization: Bearer`` |
| ``EMOVOX_CORS_ORIGINS`` | unset | comma-separated origins allowed by CORS (``*`` for any); unset: no CORS headers |
| ``EMOVOX_MAX_CONCURRENCY`` | min(4, cores) | inferences run at once in worker threads |
| ``EMOVOX_TORCH_THREADS`` | unset (``emovox serve``: 1) | intra-op threads per inference (ONNX Runtime's, or torch's) |
| ``EMOVOX_MAX_BATCH`` | 16 | most clips classified together (1: no batching) |
| ``EMOVOX_BATCH_WAIT_MS`` | 5 | longest a clip waits for others to join its batch, ms |
| ``EMOVOX_MAX_QUEUE`` | 64 | clip requests in the service at once; past it 503 with ``Retry-After`` |
| ``EMOVOX_REQUEST_TIMEOUT_S`` | 30 | longest a request waits for the model (queue and inference); past it 503 |
| ``EMOVOX_LOAD_IN_BACKGROUND`` | false | serve at once and load the models after (``/readyz`` 503 until loaded) |
| ``USE_MOCK_MODELS`` | false | ``true``: deterministic fake outputs, labelled ``"mock": true`` (front-end development); ``auto``: real models, and a mock only for a model that cannot be loaded (logged loudly, labelled the same way) |
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from emovox.defaults import CONFIDENCE_THRESHOLD, MAX_SERVED_CLIP_S

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 25.0
DEFAULT_MAX_BATCH = 16
DEFAULT_BATCH_WAIT_MS = 5.0
DEFAULT_MAX_QUEUE = 64
DEFAULT_REQUEST_TIMEOUT_S = 30.0
#: Most parts a multipart upload may have (the audio file, and a few fields a client adds).
DEFAULT_MAX_PARTS = 16
#: Most bytes of headers one multipart part may have (Content-Disposition, Content-Type, ...).
MAX_PART_HEADER_BYTES = 16 * 1024
#: Longest text message on ``WS /stream`` (its control messages are a few bytes of JSON).
MAX_WS_TEXT_BYTES = 4096
#: Every ``WS /stream`` frame is answered by a model run; a shorter frame counts as this long (seconds)
#: against ``EMOVOX_MAX_DURATION_S``, which so bounds the model runs one stream can ask for.
MIN_WS_FRAME_S = 0.01
#: ``TEXT_MODEL_DIR`` values that switch the text model off.
TEXT_OFF = ("none", "off", "disabled")
#: The ``.env`` file read from the working directory, unless ``$EMOVOX_ENV_FILE`` names another (or ``none``).
DEFAULT_ENV_FILE = ".env"
ENV_FILE_VARIABLE = "EMOVOX_ENV_FILE"
#: ``USE_MOCK_MODELS`` value: mock only the models that cannot be loaded.
MOCK_AUTO = "auto"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class SettingsError(ValueError):
    """A setting with an unusable value; the message names the setting and what is accepted."""


def _default_concurrency() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Settings:
    #: speech model: folder or shipped name (``None``: the shipped default)
    model: str | None = None
    #: text model folder (``None``: the shipped default when there is one; ``"none"``: off)
    text_model: str | None = None
    threshold: float = CONFIDENCE_THRESHOLD
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_duration_s: float = MAX_SERVED_CLIP_S
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    #: True, False or ``"auto"`` (a mock only for a model that cannot be loaded)
    use_mock_models: bool | str = False
    #: inference threads (each runs one batch at a time) and decoding threads
    max_concurrency: int = field(default_factory=_default_concurrency)
    #: torch intra-op threads, applied when the service starts (``None``: leave torch as it is). One
    #: thread per inference, with requests in parallel, is far faster on a busy CPU than OpenMP teams
    #: contending for the same cores; ``emovox serve`` uses 1.
    torch_threads: int | None = None
    #: non-streaming models on ``WS /stream``: seconds classified per update
    stream_window_s: float = 3.0
    #: most clips (from different requests) run through the model together; 1 switches batching off
    max_batch: int = DEFAULT_MAX_BATCH
    #: longest a clip waits for others to join its batch, milliseconds
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    #: clip and timeline requests admitted at once (decoding, waiting, running); past it 503 + Retry-After
    max_queue: int = DEFAULT_MAX_QUEUE
    #: longest a request waits for the model (queue and inference), seconds; past it 503
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    #: answer /healthz at once and load the models after (``/readyz`` and model routes 503 until loaded)
    load_in_background: bool = False
    #: most parts of a multipart upload; past it 413 while the body streams in
    max_parts: int = DEFAULT_MAX_PARTS
    #: where settings came from, for messages: ``{"model": "AUDIO_MODEL_DIR in .env"}`` (not a setting itself)
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < float(self.threshold) < 1.0:
            raise SettingsError(f"confidence threshold must be in (0, 1), got {self.threshold}")
        if not float(self.max_upload_mb) > 0:
            raise SettingsError(f"max upload size must be positive (MiB), got {self.max_upload_mb}")
        if not float(self.max_duration_s) > 0:
            raise SettingsError(f"max duration must be positive (seconds), got {self.max_duration_s}")
        if int(self.max_concurrency) < 1:
            raise SettingsError(f"max concurrency must be at least 1, got {self.max_concurrency}")
        if self.torch_threads is not None and int(self.torch_threads) < 1:
            raise SettingsError(f"torch threads must be at least 1, got {self.torch_threads}")
        if int(self.max_batch) < 1 or int(self.max_queue) < 1:
            raise SettingsError(f"max batch and max queue must be at least 1, got {self.max_batch} and {self.max_queue}")
        if not 0.0 <= float(self.batch_wait_ms) <= 1000.0:
            raise SettingsError(f"batch wait must be between 0 and 1000 ms, got {self.batch_wait_ms}")
        if int(self.max_parts) < 1:
            raise SettingsError(f"max parts must be at least 1, got {self.max_parts}")
        if not float(self.request_timeout_s) > 0:
            raise SettingsError(f"request timeout must be positive (seconds), got {self.request_timeout_s}")
        if self.api_key is not None and not self.api_key.strip():
            object.__setattr__(self, "api_key", None)
        if isinstance(self.cors_origins, str):
            object.__setattr__(self, "cors_origins", parse_origins(self.cors_origins))
        object.__setattr__(self, "use_mock_models", parse_mock("USE_MOCK_MODELS", self.use_mock_models))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def text_disabled(self) -> bool:
        return self.text_model is not None and self.text_model.strip().lower() in TEXT_OFF

    @property
    def mock_auto(self) -> bool:
        return self.use_mock_models == MOCK_AUTO

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, env_file: str | os.PathLike | None = None,
                 **overrides: Any) -> Settings:
        """Settings from ``env`` (default: ``os.environ`` over the variables of the ``.env`` file, when
        it exists); keyword ``overrides`` that are not ``None`` win. ``env_file``: the file (default
        ``$EMOVOX_ENV_FILE``, else ``.env`` in the working directory; ``"none"``: no file). An explicit
        ``env`` mapping is the whole environment: no file is read."""
        from_file: dict[str, str] = {}
        path = None
        if env is None:
            path = env_file if env_file is not None else os.environ.get(ENV_FILE_VARIABLE, DEFAULT_ENV_FILE)
            from_file = read_env_file(None if str(path).strip().lower() == "none" else path)
            env = {**from_file, **os.environ}
        values: dict[str, Any] = {"origins": {}}
        for key, name in (("model", "AUDIO_MODEL_DIR"), ("text_model", "TEXT_MODEL_DIR")):
            if overrides.get(key) is not None:
                values["origins"][key] = f"--{key.replace('_', '-')}"
            elif env.get(name, "").strip():
                in_file = name in from_file and name not in os.environ
                values["origins"][key] = f"{name} in {path}" if in_file else f"the environment variable {name}"

        def get(name: str) -> str | None:
            v = env.get(name)
            return v if v is not None and v.strip() != "" else None

        if (v := get("AUDIO_MODEL_DIR")) is not None:
            values["model"] = v
        if (v := get("TEXT_MODEL_DIR")) is not None:
            values["text_model"] = v
        if (v := get("CONFIDENCE_THRESHOLD")) is not None:
            values["threshold"] = _number("CONFIDENCE_THRESHOLD", v)
        if (v := get("EMOVOX_MAX_UPLOAD_MB")) is not None:
            values["max_upload_mb"] = _number("EMOVOX_MAX_UPLOAD_MB", v)
        if (v := get("EMOVOX_MAX_DURATION_S")) is not None:
            values["max_duration_s"] = _number("EMOVOX_MAX_DURATION_S", v)
        if (v := get("EMOVOX_API_KEY")) is not None:
            values["api_key"] = v
        if (v := get("EMOVOX_CORS_ORIGINS")) is not None:
            values["cors_origins"] = parse_origins(v)
        if (v := get("EMOVOX_MAX_CONCURRENCY")) is not None:
            values["max_concurrency"] = int(_number("EMOVOX_MAX_CONCURRENCY", v))
        if (v := get("EMOVOX_TORCH_THREADS")) is not None:
            values["torch_threads"] = int(_number("EMOVOX_TORCH_THREADS", v))
        if (v := env.get("USE_MOCK_MODELS")) is not None:
            values["use_mock_models"] = parse_mock("USE_MOCK_MODELS", v)
        for name, key, kind in _BATCHING_VARIABLES:
            if (v := get(name)) is not None:
                values[key] = parse_bool(name, v) if kind is bool else kind(_number(name, v))
        known = {f.name for f in fields(cls)}
        for k, v in overrides.items():
            if k not in known:
                raise TypeError(f"unknown setting {k!r}; known: {', '.join(sorted(known))}")
            if v is not None:
                values[k] = parse_origins(v) if k == "cors_origins" and isinstance(v, str) else v
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that :meth:`from_env` reads back into these settings (for worker processes)."""
        env = {
            "CONFIDENCE_THRESHOLD": repr(float(self.threshold)),
            "EMOVOX_MAX_UPLOAD_MB": repr(float(self.max_upload_mb)),
            "EMOVOX_MAX_DURATION_S": repr(float(self.max_duration_s)),
            "EMOVOX_MAX_CONCURRENCY": str(int(self.max_concurrency)),
            "USE_MOCK_MODELS": MOCK_AUTO if self.mock_auto else ("true" if self.use_mock_models else "false"),
            "EMOVOX_CORS_ORIGINS": ",".join(self.cors_origins),
        }
        if self.model is not None:
            env["AUDIO_MODEL_DIR"] = str(self.model)
        if self.text_model is not None:
            env["TEXT_MODEL_DIR"] = str(self.text_model)
        if self.api_key:
            env["EMOVOX_API_KEY"] = self.api_key
        if self.torch_threads is not None:
            env["EMOVOX_TORCH_THREADS"] = str(int(self.torch_threads))
        for name, key, kind in _BATCHING_VARIABLES:
            value = getattr(self, key)
            env[name] = ("true" if value else "false") if kind is bool else repr(kind(value))
        return env

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)


#: (variable, setting, type) of the batching, queueing, loading and multipart settings.
_BATCHING_VARIABLES = (("EMOVOX_MAX_BATCH", "max_batch", int), ("EMOVOX_BATCH_WAIT_MS", "batch_wait_ms", float),
                       ("EMOVOX_MAX_QUEUE", "max_queue", int), ("EMOVOX_REQUEST_TIMEOUT_S", "request_timeout_s", float),
                       ("EMOVOX_LOAD_IN_BACKGROUND", "load_in_background", bool), ("EMOVOX_MAX_PARTS", "max_parts", int))


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false (accepted: {', '.join(_TRUE + _FALSE[:-1])}), got {value!r}")


def parse_mock(name: str, value: bool | str) -> bool | str:
    """``USE_MOCK_MODELS``: a boolean, or ``"auto"``."""
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() == MOCK_AUTO:
        return MOCK_AUTO
    try:
        return parse_bool(name, str(value))
    except SettingsError:
        raise SettingsError(f"{name} must be true, false or {MOCK_AUTO} (accepted: {', '.join(_TRUE + _FALSE[:-1])}, "
                            f"{MOCK_AUTO}), got {value!r}") from None


def read_env_file(path: str | os.PathLike | None) -> dict[str, str]:
    """The variables a ``.env`` file sets (empty when ``path`` is None or the file does not exist)."""
    if path is None or not Path(path).is_file():
        return {}
    try:
        from dotenv import dotenv_values
    except ImportError as e:
        raise SettingsError(f"{path}: reading a .env file needs python-dotenv (pip install 'emovox[serve]')") from e
    try:
        values = dotenv_values(path, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SettingsError(f"{path}: not valid UTF-8 at byte offset {e.start}") from e
    log.info("settings: read %s", path)
    return {k: v for k, v in values.items() if v is not None}


def parse_origins(value: str) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())


def _number(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {value!r}") from None


def settings_default(name: str) -> Any:
    """The default of the :class:`Settings` field ``name`` (what ``emovox serve --help`` shows)."""
    f = next(f for f in fields(Settings) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default

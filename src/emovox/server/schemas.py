"""Response (and request) models of the HTTP API; they are what ``/docs`` shows.

Every prediction from a mock model carries ``"mock": true`` (``USE_MOCK_MODELS``; the field is
absent otherwise), except ``/music-moods/``, whose bare ``{emotion: mood}`` mapping stays as seed
002 reads it (the ``X-Emovox-Mock: true`` header says so); errors are :class:`ErrorResponse`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MOCK_FIELD = Field(None, description='true when a mock model gave this answer (USE_MOCK_MODELS); absent otherwise')
WARNING_FIELD = Field(None, description="a human-readable warning when low_confidence is true (the FastAPI wav2vec2 hybrid: predictions "
                                        "under 0.70 show a warning); absent otherwise")
UNSUPPORTED_FIELD = Field(None, description="labels of labels= that this model cannot express (their score is always "
                                            "0), e.g. calm for ravdess8 on a model without calm; absent when none")

#: Longest batch and longest text accepted by ``POST /predict-text/``.
MAX_TEXTS = 256
MAX_TEXT_CHARS = 20000


class ErrorResponse(BaseModel):
    status: str = Field("error", description='always "error"')
    error: str = Field(description="what was wrong, and what is accepted")
    detail: Any = Field(None, description="more about the error (validation errors, limits, ...)")
    mock: bool | None = MOCK_FIELD


class QualityResponse(BaseModel):
    """:func:`emovox.degrade.measure_quality`: the clip's estimated SNR, speech level, clipped share and bandwidth;
    ``issues`` lists what makes answers less reliable (empty for a good recording)."""

    snr_db: float
    speech_dbfs: float
    clipped_fraction: float
    bandwidth_hz: float
    issues: list[str]


class EmotionResponse(BaseModel):
    """The FastAPI wav2vec2 hybrid's ``/predict-emotion/`` answer, plus ``low_confidence``, ``threshold`` and ``duration_s``."""

    emotion: str = Field(description="top emotion")
    confidence: float = Field(description="its calibrated probability")
    music_mood: str = Field(description="music mood for the emotion (the FastAPI wav2vec2 hybrid)")
    all_probabilities: dict[str, float] = Field(description="every label's probability, in the model's order")
    status: str = Field("success", description='"success"')
    low_confidence: bool = Field(description="confidence is below the service's threshold")
    warning: str | None = WARNING_FIELD
    threshold: float = Field(description="the confidence threshold for this clip: the service's (CONFIDENCE_THRESHOLD), "
                                         "raised by POOR_INPUT_THRESHOLD_RAISE when the clip's quality is poor")
    duration_s: float = Field(description="duration of the decoded clip, seconds")
    silent: bool | None = Field(None, description="true when the clip is (near) digital silence")
    quality: QualityResponse | None = Field(None, description="the clip's measured quality: why an answer may be uncertain")
    model: str = Field(description="name of the speech model that answered")
    unsupported_labels: list[str] | None = UNSUPPORTED_FIELD
    mock: bool | None = MOCK_FIELD


class RealtimeResponse(BaseModel):
    """The FastAPI wav2vec2 hybrid's ``/predict-realtime/`` answer, plus ``low_confidence`` and its ``warning``."""

    emotion: str
    confidence: float
    music_mood: str
    low_confidence: bool = Field(description="confidence is below the service's threshold")
    warning: str | None = WARNING_FIELD
    mock: bool | None = MOCK_FIELD


class ClassifyResponse(BaseModel):
    """The Keras backend CNN's ``/api/classify-emotion`` answer."""

    emotion: str
    confidence: float
    mock: bool | None = MOCK_FIELD


class EmotionsResponse(BaseModel):
    emotions: list[str] = Field(description="labels in the model's output order (or of labels=)")
    count: int
    label_sets: list[str] | None = Field(None, description="the label sets labels= accepts on the speech routes "
                                                            "(those this model's labels fold into)")
    unsupported_labels: list[str] | None = UNSUPPORTED_FIELD
    mock: bool | None = MOCK_FIELD


class Segment(BaseModel):
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")
    emotion: str
    confidence: float = Field(description="mean confidence of the merged windows")


class TimelineWindow(BaseModel):
    """One classified stretch of a recording: a timeline's window (its quality and the rest of the record may follow)."""

    model_config = ConfigDict(extra="allow")

    start: float = Field(description="seconds")
    end: float = Field(description="seconds")
    emotion: str
    confidence: float
    scores: dict[str, float]
    music_mood: str
    low_confidence: bool
    warning: str | None = WARNING_FIELD
    unsupported_labels: list[str] | None = UNSUPPORTED_FIELD


class TimelineResponse(BaseModel):
    """Sliding-window predictions over a long recording and the merged segments (``Timeline.to_dict()``)."""

    duration: float = Field(description="seconds")
    window_s: float
    hop_s: float
    segments: list[Segment] = Field(description="consecutive windows with the same emotion, tiling [0, duration]")
    windows: list[TimelineWindow]
    status: str = "success"
    model: str
    mock: bool | None = MOCK_FIELD


class SpeechSegment(TimelineWindow):
    """One stretch of speech and its emotion (``emovox classify --segments``' record without the path): the fields
    of a timeline's window."""


class SegmentsResponse(BaseModel):
    """The speech in a recording (voice activity detection), each segment classified as a whole."""

    duration: float = Field(description="seconds")
    speech: float = Field(description="seconds of speech: the segments' total length")
    segments: list[SpeechSegment] = Field(description="in order; empty when there is no speech")
    message: str | None = Field(None, description="says so when no speech was found")
    status: str = "success"
    model: str
    mock: bool | None = MOCK_FIELD


class TextRequest(BaseModel):
    """One text (``{"text": ...}``) or a batch (``{"texts": [...]}``)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=MAX_TEXT_CHARS, examples=["I can't believe it worked, thank you!"])
    texts: list[str] | None = Field(None, min_length=1, max_length=MAX_TEXTS)

    @model_validator(mode="after")
    def _one_of(self) -> TextRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError('give exactly one of "text" (a string) or "texts" (a list of strings)')
        if self.texts is not None:
            long = [i for i, t in enumerate(self.texts) if len(t) > MAX_TEXT_CHARS]
            if long:
                raise ValueError(f"texts {long[:5]} are longer than {MAX_TEXT_CHARS} characters")
        return self


class TextLabel(BaseModel):
    label: str
    score: float


class TextResult(BaseModel):
    """Multi-label result for one text (the text and audio evaluation kit: sigmoid scores, per-class thresholds)."""

    text: str
    label: str | None = Field(description="best predicted label (the top score when none passes its threshold)")
    score: float | None
    labels: list[TextLabel] = Field(description="every predicted label (score at or above its threshold), best first")
    scores: dict[str, float] = Field(description="every label's sigmoid score")
    label_set: str = Field(description="goemotions, ekman or audio7")
    n_tokens: int
    truncated: bool


class TextResponse(TextResult):
    status: str = "success"
    model: str
    mock: bool | None = MOCK_FIELD


class TextBatchResponse(BaseModel):
    status: str = "success"
    results: list[TextResult]
    count: int
    model: str
    mock: bool | None = MOCK_FIELD


class AudioModelInfo(BaseModel):
    name: str
    kind: str = Field(description="architecture (cnn, lstm, ...)")
    version: str = Field(description="sha256 prefix of the weights file: changes whenever the weights do")
    emovox_version: str | None = Field(None, description="emovox version that wrote the model")
    labels: list[str]
    sample_rate_hz: int
    streaming: bool = Field(description="frame-by-frame streaming model (else windowed re-classification)")


class TextModelInfo(BaseModel):
    available: bool
    name: str | None = None
    version: str | None = None
    labels: list[str] | None = None
    reason: str | None = Field(None, description="why text is unavailable")


class Health(BaseModel):
    status: str = Field("ok", description='"ok"')
    service: str = "emovox"
    version: str = Field(description="emovox version")
    mock: bool = Field(description="true when any model is a mock (USE_MOCK_MODELS; models.audio.mock and "
                                   "models.text.mock say which)")
    models: dict[str, Any] = Field(description='{"audio": AudioModelInfo, "text": TextModelInfo}')
    labels: list[str] = Field(description="the speech model's labels")
    text_available: bool
    limits: dict[str, float] = Field(description="max_upload_mb, max_duration_s, confidence_threshold")
    auth: dict[str, Any] = Field(description="whether an API key is required and which routes stay open")
    links: dict[str, str]


class Probe(BaseModel):
    """``/healthz`` and ``/readyz`` when they pass (a failing probe answers 503 with an ErrorResponse)."""

    status: str = Field("ok", description='"ok"')

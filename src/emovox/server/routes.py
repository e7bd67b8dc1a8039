"""The HTTP routes: the web page, speech (the FastAPI wav2vec2 hybrid's and the Keras backend CNN's endpoints, timelines), text, and operations."""

from __future__ import annotations

from importlib import resources

from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.responses import HTMLResponse, Response

from emovox import __version__
from emovox.data.labels import music_mood
from emovox.server import schemas
from emovox.server.auth import OPEN_ROUTES, require_key
from emovox.server.clips import decode_clip
from emovox.server.context import (
    ERRORS,
    LABELS_QUERY,
    app_settings,
    check_labels,
    in_thread,
    label_sets,
    loaded_services,
    mark_mock,
    model_slot,
    multipart_doc,
    not_ready,
    round6,
    speech_segments,
    time_left,
    timeline_windows,
)
from emovox.server.stream import stream_session
from emovox.server.uploads import ApiError, read_upload

#: Static files of the web page (name -> media type); nothing else is ever read from disk.
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
UI_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self' ws: wss:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
          "frame-ancestors 'none'")



def static_file(name: str) -> bytes:
    return (resources.files("emovox.server") / "static" / name).read_bytes()


def add_routes(app: FastAPI) -> None:
    """Every route, in the order the OpenAPI document lists them."""
    add_page_routes(app)
    add_speech_routes(app)
    add_text_routes(app)


def add_page_routes(app: FastAPI) -> None:
    """Health (open) and the web page."""

    @app.get("/", response_model=schemas.Health, tags=["service"], summary="Health, models and links (open)")
    async def health(request: Request):
        s, st = loaded_services(request), app_settings(request)
        return {
            "status": "ok", "service": "emovox", "version": __version__, "mock": s.any_mock,
            "models": {"audio": {**s.audio_info, **({"mock": True} if s.mock else {})}, "text": s.text_info},
            "labels": s.audio.labels, "text_available": bool(s.text_info.get("available")),
            "limits": {"max_upload_mb": st.max_upload_mb, "max_duration_s": st.max_duration_s,
                       "confidence_threshold": st.threshold},
            "auth": {"required": bool(st.api_key), "header": "X-API-Key, or Authorization: Bearer <key>",
                     "websocket": "X-API-Key header, or ?api_key= (browsers cannot set WebSocket headers)",
                     "open_routes": list(OPEN_ROUTES)},
            "links": {"ui": "/ui", "docs": "/docs", "openapi": "/openapi.json"},
        }

    @app.get("/ui", include_in_schema=False)
    async def ui() -> HTMLResponse:
        return HTMLResponse(static_file("index.html"), headers={"Content-Security-Policy": UI_CSP,
                                                            "Cache-Control": "no-cache"})

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_asset(name: str) -> Response:
        if name not in STATIC_FILES or name == "index.html":
            raise ApiError(404, f"no such page asset: {name!r}")
        return Response(static_file(name), media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


def add_speech_routes(app: FastAPI) -> None:
    auth = [Depends(require_key)]

    async def classify_upload(request: Request, labels: str | None, fields: tuple[str, ...]):
        """Check the labels, read the upload from one of ``fields``, decode it in a worker thread and
        classify it in the next batch. -> (prediction, duration in seconds)"""
        s, st = loaded_services(request), app_settings(request)
        labels = check_labels(s, labels)
        upload = await read_upload(request, fields, max_parts=st.max_parts)
        with model_slot(request) as batcher:
            job, duration = await in_thread(request, decode_clip, s.audio, upload.data, labels=labels,
                                             max_duration_s=st.max_duration_s)
            return await batcher.run(job, timeout_s=time_left(request)), duration

    # -- predictions -------------------------------------------------------------------------
    @app.post("/predict-emotion/", response_model=schemas.EmotionResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=auth, openapi_extra=multipart_doc("file"), tags=["speech"],
              summary="Classify one clip (the FastAPI wav2vec2 hybrid)")
    async def predict_emotion(request: Request, labels: str | None = LABELS_QUERY):
        pred, duration = await classify_upload(request, labels, ("file",))
        s = loaded_services(request)
        return mark_mock(request, {
            "emotion": pred.label, "confidence": round6(pred.score), "music_mood": pred.music_mood,
            "all_probabilities": {k: round6(v) for k, v in pred.scores.items()}, "status": "success",
            "low_confidence": pred.low_confidence, "warning": pred.warning, "threshold": pred.effective_threshold,
            "duration_s": round(duration, 3), "silent": True if pred.silent else None, "model": s.audio.name,
            "quality": pred.quality.to_dict() if pred.quality is not None else None,
            "unsupported_labels": list(pred.unsupported_labels) or None,
        })

    @app.post("/predict-realtime/", response_model=schemas.RealtimeResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=auth, openapi_extra=multipart_doc("audio_buffer"), tags=["speech"],
              summary="Classify a short buffer (the FastAPI wav2vec2 hybrid)")
    async def predict_realtime(request: Request, labels: str | None = LABELS_QUERY):
        pred, _ = await classify_upload(request, labels, ("audio_buffer",))
        return mark_mock(request, {"emotion": pred.label, "confidence": round6(pred.score), "music_mood": pred.music_mood,
                              "low_confidence": pred.low_confidence, "warning": pred.warning})

    @app.post("/api/classify-emotion", response_model=schemas.ClassifyResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=auth, openapi_extra=multipart_doc("file", "audio"), tags=["speech"],
              summary="Classify one clip (the Keras backend CNN; field 'file' or 'audio')")
    async def classify_emotion(request: Request, labels: str | None = LABELS_QUERY):
        if not labels and loaded_services(request).mock:
            labels = "basic5"  # the Keras backend CNN's five classes, from the mock model too ("mock": true says so)
        pred, _ = await classify_upload(request, labels, ("file", "audio"))
        return mark_mock(request, {"emotion": pred.label, "confidence": round6(pred.score)})

    @app.post("/predict-timeline/", response_model=schemas.TimelineResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=auth, openapi_extra=multipart_doc("file"), tags=["speech"],
              summary="Emotion over time in a long recording")
    async def predict_timeline(request: Request, labels: str | None = LABELS_QUERY,
                               window_s: float = Query(3.0, ge=0.5, le=30.0, description="window length, seconds"),
                               hop_s: float = Query(1.0, ge=0.25, le=30.0, description="hop between windows, seconds")):
        s, st = loaded_services(request), app_settings(request)
        labels = check_labels(s, labels)
        upload = await read_upload(request, ("file",), max_parts=st.max_parts)
        with model_slot(request):  # its windows are batched within the request
            tl = await in_thread(request, timeline_windows, s, st, upload.data, labels, window_s, hop_s)
        return mark_mock(request, {**tl.to_dict(), "status": "success", "model": s.audio.name})

    @app.post("/predict-segments/", response_model=schemas.SegmentsResponse, response_model_exclude_none=True,
              responses=ERRORS, dependencies=auth, openapi_extra=multipart_doc("file"), tags=["speech"],
              summary="The speech in a recording, each segment's emotion (voice activity detection)")
    async def predict_segments(request: Request, labels: str | None = LABELS_QUERY,
                               min_silence_ms: float = Query(300.0, ge=0, le=10000, description="a pause this long "
                                                             "ends a segment"),
                               speech_pad_ms: float = Query(30.0, ge=0, le=2000, description="padding on each side"),
                               max_segment_s: float = Query(30.0, ge=5.0, le=600.0, description="longer segments "
                                                            "are split at their longest pause")):
        s, st = loaded_services(request), app_settings(request)
        labels = check_labels(s, labels)
        upload = await read_upload(request, ("file",), max_parts=st.max_parts)
        options = {"min_silence_ms": min_silence_ms, "speech_pad_ms": speech_pad_ms, "max_segment_s": max_segment_s}
        with model_slot(request):  # its segments are batched within the request
            res = await in_thread(request, speech_segments, s, st, upload.data, labels, options)
        return mark_mock(request, {**res.to_dict(), "message": res.message, "status": "success",
                                   "model": s.audio.name})

    @app.get("/emotions/", response_model=schemas.EmotionsResponse, response_model_exclude_none=True,
             responses={400: ERRORS[400], 401: ERRORS[401]}, dependencies=auth, tags=["speech"],
             summary="The model's labels (the FastAPI wav2vec2 hybrid)")
    async def emotions(request: Request, labels: str | None = LABELS_QUERY):
        s = loaded_services(request)
        labels = check_labels(s, labels)
        names = s.audio.output_labels(labels)
        return mark_mock(request, {"emotions": names, "count": len(names), "label_sets": label_sets(s),
                              "unsupported_labels": s.audio.unsupported_labels(labels) or None})

    @app.get("/music-moods/", response_model=dict[str, str],
             responses={400: ERRORS[400], 401: ERRORS[401]}, dependencies=auth, tags=["speech"],
             summary="Music mood per label (the FastAPI wav2vec2 hybrid): {emotion: mood}; in mock mode the mapping stays the "
                     "same and the X-Emovox-Mock: true header says so")
    async def music_moods(request: Request, labels: str | None = LABELS_QUERY):
        s = loaded_services(request)
        names = s.audio.output_labels(check_labels(s, labels))
        return {n: music_mood(n) for n in names}  # the bare mapping, as the FastAPI wav2vec2 hybrid's clients read it


def add_text_routes(app: FastAPI) -> None:
    """Text emotion, and the streaming WebSocket."""
    auth = [Depends(require_key)]

    @app.post("/predict-text/", response_model=schemas.TextResponse | schemas.TextBatchResponse,
              response_model_exclude_none=True,
              responses={400: ERRORS[400], 401: ERRORS[401], 413: ERRORS[413], 422: ERRORS[422],
                         503: {"model": schemas.ErrorResponse, "description": "no text model available"}},
              dependencies=auth, tags=["text"], summary="Multi-label text emotion (the text and audio evaluation kit)")
    async def predict_text(request: Request, body: schemas.TextRequest,
                           labels: str = Query("goemotions", description="goemotions, ekman or audio7")):
        s = loaded_services(request)
        if s.text is None:
            retry = {"Retry-After": "2"} if s.text_info.get("loading") else None
            raise ApiError(503, f"text emotion model unavailable: {s.text_info.get('reason')}",
                           {"text_model": s.text_info}, headers=retry)
        texts = [body.text] if body.text is not None else list(body.texts or [])
        try:
            results = await in_thread(request, s.text.predict, texts, labels=labels)
        except ValueError as e:  # TextError (empty text), LabelError (labels=)
            raise ApiError(400, str(e)) from e
        rows = [{k: r.to_dict()[k] for k in schemas.TextResult.model_fields} for r in results]
        name = s.text_info.get("name") or "text"
        if body.text is not None:
            return mark_mock(request, {**rows[0], "status": "success", "model": name}, mock=s.text_mock)
        return mark_mock(request, {"status": "success", "results": rows, "count": len(rows), "model": name},
                    mock=s.text_mock)

    # -- streaming ----------------------------------------------------------------------------
    @app.websocket("/stream")
    async def stream(ws: WebSocket, labels: str | None = None, sample_rate_hz: int = 16000,
                     api_key: str | None = None, final_answer: str = "last", segments: bool = False):
        await stream_session(ws, labels, sample_rate_hz, api_key, final_answer, segments)


def add_operations_routes(app: FastAPI) -> None:
    """Probes and metrics for orchestrators and monitoring (open, like ``GET /``)."""

    @app.get("/healthz", response_model=schemas.Probe, tags=["service"], summary="Liveness: the process answers",
             responses={503: {"model": schemas.ErrorResponse, "description": "the models failed to load"}})
    async def healthz(request: Request):
        failed = getattr(request.app.state, "load_error", None)
        if failed:
            raise not_ready(request.app)
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.Probe, tags=["service"],
             summary="Readiness: the models are loaded and requests are taken",
             responses={503: {"model": schemas.ErrorResponse, "description": "still loading (Retry-After), or failed"}})
    async def readyz(request: Request):
        if getattr(request.app.state, "services", None) is None:
            raise not_ready(request.app)
        return {"status": "ok"}

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics (text format)",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics(request: Request) -> Response:
        body, content_type = request.app.state.metrics.exposition()
        return Response(body, media_type=content_type)

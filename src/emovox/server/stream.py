"""The WebSocket stream (``/ws/stream``): open, authenticate, feed PCM frames to a streaming session, answer per frame."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from emovox.audio import AudioError, pcm16_to_float
from emovox.server.auth import key_ok
from emovox.server.context import app_settings, check_labels, in_thread, loaded_services, mark_mock
from emovox.server.settings import MAX_WS_TEXT_BYTES, MIN_WS_FRAME_S
from emovox.server.uploads import ApiError, error_body

#: WebSocket close codes.
WS_NORMAL, WS_POLICY, WS_TOO_BIG = 1000, 1008, 1009


async def ws_fail(ws: WebSocket, message: str, code: int, **detail: Any) -> None:
    """Send an error body, then close the WebSocket with ``code`` (quietly when the client has gone)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_json(mark_mock(ws, error_body(message, detail or None)))
        await ws.close(code=code, reason=message[:120])


async def open_stream(ws: WebSocket, labels: str | None, sample_rate_hz: int, api_key: str | None,
                       final_answer: str):
    """Check the key and parameters of ``WS /stream`` and open the model's streaming session.
    -> ``(session, resampler or None)``, or None after closing the socket with 1008."""
    s, st = loaded_services(ws), app_settings(ws)
    auth = ws.headers.get("authorization", "")
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    if not key_ok(st.api_key, ws.headers.get("x-api-key"), bearer, api_key):
        await ws_fail(ws, "missing or invalid API key: send the X-API-Key header or ?api_key=", WS_POLICY)
        return None
    try:
        labels = check_labels(s, labels)
    except ApiError as e:
        await ws_fail(ws, e.message, WS_POLICY)
        return None
    if not 8000 <= sample_rate_hz <= 192000:
        await ws_fail(ws, f"sample_rate_hz must be between 8000 and 192000, got {sample_rate_hz}", WS_POLICY)
        return None
    model_sr = s.audio.sample_rate_hz
    resampler = None
    if sample_rate_hz != model_sr:
        import soxr

        resampler = soxr.ResampleStream(sample_rate_hz, model_sr, 1, dtype="float32")
    try:
        session = s.audio.stream(labels=labels, window_s=st.stream_window_s, max_buffer_s=st.max_duration_s,
                                 final_answer=final_answer)
    except ValueError as e:
        await ws_fail(ws, str(e), WS_POLICY)
        return None
    return session, resampler


async def stream_session(ws: WebSocket, labels: str | None, sample_rate_hz: int, api_key: str | None,
                  final_answer: str = "last", segments: bool = False) -> None:
    """``WS /stream``: binary 16-bit little-endian PCM chunks in, one JSON update per chunk out.

    Text message ``{"event": "end"}`` asks for the final result (``"final": true``), after which
    the server closes (1000). ``{"event": "reset"}`` starts over. A frame with an odd byte count
    (or no bytes before any audio) is answered with an error message and dropped; the connection
    stays usable. Streams longer than ``EMOVOX_MAX_DURATION_S`` (a frame shorter than
    :data:`MIN_WS_FRAME_S` counts as that long), binary frames larger than
    ``EMOVOX_MAX_UPLOAD_MB`` and text messages over :data:`MAX_WS_TEXT_BYTES` are closed with 1009;
    a wrong API key or bad parameters with 1008. ``final_answer=mean`` (frame-by-frame models):
    every update and the final one report the mean of every frame's probabilities instead of the last frame's.
    ``segments=true``: speech events too (:class:`emovox.segments.live.LiveSegments`): ``{"event":
    "speech_start"}`` as speech starts and ``{"event": "speech_end"}`` with the utterance's emotion as it ends.
    """
    loaded_services(ws)  # still loading: refused before the socket is accepted
    await ws.accept()
    opened = await open_stream(ws, labels, sample_rate_hz, api_key, final_answer)
    if opened is None:
        return
    stream = StreamState(ws, *opened, sample_rate_hz)
    if segments:
        from emovox.segments.live import LiveSegments

        stream.live = LiveSegments(loaded_services(ws).audio, labels=stream.session.labels)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data is not None and not await stream.audio(data):
                return
            if text is not None and not await stream.control(text):
                return
    except WebSocketDisconnect:  # the client went away (mid-stream, or while an answer was being sent)
        return
    except AudioError as e:
        await ws_fail(ws, str(e), WS_POLICY)


class StreamState:
    """One ``WS /stream`` session: its model session, resampler and the audio received so far."""

    def __init__(self, ws: WebSocket, session: Any, resampler: Any, sample_rate_hz: int):
        self.ws, self.session, self.resampler = ws, session, resampler
        self.settings = app_settings(ws)
        self.max_samples = int(self.settings.max_duration_s * sample_rate_hz)
        # every frame is answered by a model run: one shorter than MIN_WS_FRAME_S counts as that long
        # against the limit, so 1-sample frames cannot buy 16000 model runs per second of audio
        self.min_frame = int(MIN_WS_FRAME_S * sample_rate_hz)
        self.received = 0
        self.live: Any = None  # segments=true: the stream's speech events

    def _push(self, x: np.ndarray) -> list[dict[str, Any]]:
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x)
        return self.session.push(x) + (self.live.push(x) if self.live is not None and x.size else [])

    def _finish(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        events: list[dict[str, Any]] = []
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                self.session.push(tail)
                events += self.live.push(tail) if self.live is not None else []
        if self.live is not None and self.received:
            events += self.live.finish()
        return events, self.session.finish()

    async def _send_error(self, message: str, code: str, **detail: Any) -> None:
        await self.ws.send_json(mark_mock(self.ws, {**error_body(message, detail or None), "code": code}))

    async def audio(self, data: bytes) -> bool:
        """Answer one binary frame; False once the socket is closed."""
        ws, st = self.ws, self.settings
        if len(data) > st.max_upload_bytes:
            await ws_fail(ws, f"frame too large: {len(data)} bytes, more than {st.max_upload_mb:g} MiB "
                               "(EMOVOX_MAX_UPLOAD_MB); send shorter chunks", WS_TOO_BIG, bytes=len(data))
            return False
        if len(data) % 2:
            await self._send_error(f"bad frame: 16-bit PCM needs an even number of bytes, got {len(data)}; "
                                   "frame dropped", "bad_frame", bytes=len(data))
            return True
        self.received += max(len(data) // 2, self.min_frame)
        if self.received > self.max_samples:
            await ws_fail(ws, f"stream too long: more than {st.max_duration_s:g} s of audio (EMOVOX_MAX_DURATION_S; "
                               f"frames shorter than {MIN_WS_FRAME_S * 1000:g} ms count as {MIN_WS_FRAME_S * 1000:g} ms)",
                           WS_TOO_BIG)
            return False
        updates = await in_thread(ws, self._push, pcm16_to_float(data))
        if not updates:  # an empty frame before any audio: nothing to answer yet
            await self._send_error("bad frame: no audio samples yet; frame dropped", "bad_frame", bytes=0)
        for update in updates:
            await ws.send_json(mark_mock(ws, {**update, "status": "success", "final": False}))
        return True

    async def control(self, text: str) -> bool:
        """Answer one text message (``end``, ``reset``, or an error); False once the socket is closed."""
        ws = self.ws
        if len(text) > MAX_WS_TEXT_BYTES:
            await ws_fail(ws, f"text message too large: {len(text)} characters, more than {MAX_WS_TEXT_BYTES}; "
                               'text messages are {"event": "end"} or {"event": "reset"}', WS_TOO_BIG)
            return False
        try:
            event = json.loads(text).get("event")
        except (ValueError, AttributeError, RecursionError):
            event = None
        if event == "end":
            events, final = await in_thread(ws, self._finish)
            for event in events:
                await ws.send_json(mark_mock(ws, {**event, "status": "success", "final": False}))
            if final is None:
                await ws.send_json(mark_mock(ws, {**error_body("no audio was received"), "final": True}))
            else:
                await ws.send_json(mark_mock(ws, {**final, "status": "success", "final": True}))
            await ws.close(code=WS_NORMAL)
            return False
        if event == "reset":
            self.session.reset()
            if self.live is not None:
                self.live.reset()
            self.received = 0
            await ws.send_json(mark_mock(ws, {"status": "success", "event": "reset"}))
            return True
        await self._send_error('unknown message: send binary 16-bit PCM chunks, {"event": "end"} or '
                               '{"event": "reset"}', "bad_message")
        return True

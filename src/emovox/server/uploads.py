"""Reading request bodies within limits, in memory.

- :class:`BodyLimitMiddleware` answers 413 from ``Content-Length`` before reading anything, and
  counts the bytes of every body as they arrive (chunked uploads have no ``Content-Length``),
  stopping at the limit: a 2 GB upload costs at most the limit in memory.
- :func:`read_upload` parses ``multipart/form-data`` as it streams (``python-multipart``'s
  incremental parser) and keeps only the wanted field's bytes, in memory: nothing is written to
  disk, and the client's file name is never used for anything. It stops at the first part past
  ``EMOVOX_MAX_PARTS`` and at part headers over :data:`~.settings.MAX_PART_HEADER_BYTES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emovox.server.settings import DEFAULT_MAX_PARTS, MAX_PART_HEADER_BYTES


class ApiError(HTTPException):
    """An HTTP error answered as ``{"status": "error", "error": message, "detail": ...}``."""

    def __init__(self, status_code: int, message: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.message = message
        self.extra = detail


def error_body(message: str, detail: Any = None, *, mock: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"status": "error", "error": message, "detail": detail}
    if mock:
        body["mock"] = True
    return body


def too_large(n_bytes: int | None, max_bytes: int) -> ApiError:
    mb = max_bytes / (1024 * 1024)
    what = f"{n_bytes} bytes" if n_bytes is not None else "more bytes"
    return ApiError(413, f"request body too large: {what} exceeds the limit of {mb:g} MiB (EMOVOX_MAX_UPLOAD_MB)",
                    {"max_upload_bytes": max_bytes}, headers={"Connection": "close"})


class BodyLimitMiddleware:
    """Reject bodies over ``max_bytes``: up front from ``Content-Length``, else while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int, mock: bool | Callable[[], bool] = False):
        """``mock``: whether error bodies say ``"mock": true`` (a callable is asked per request)."""
        self.app, self.max_bytes = app, int(max_bytes)
        self._mock = mock if callable(mock) else (lambda: bool(mock))

    @property
    def mock(self) -> bool:
        return self._mock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    resp = JSONResponse(error_body("invalid Content-Length header", mock=self.mock), 400)
                    await resp(scope, receive, send)
                    return
        if declared is not None and declared > self.max_bytes:
            err = too_large(declared, self.max_bytes)
            resp = JSONResponse(error_body(err.message, err.extra, mock=self.mock), 413, headers={"Connection": "close"})
            await resp(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(None, self.max_bytes)
            return message

        await self.app(scope, counted, send)


def _parser_has_limits(parser_class: type) -> bool:
    import inspect

    return "max_header_size" in inspect.signature(parser_class.__init__).parameters


@dataclass
class Upload:
    field: str
    content_type: str | None
    data: bytes


def too_many_parts(max_parts: int) -> ApiError:
    return ApiError(413, f"too many multipart parts: more than {max_parts} (EMOVOX_MAX_PARTS); send the audio file "
                         "and nothing else", {"max_parts": max_parts}, headers={"Connection": "close"})


def part_header_too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"multipart part headers too large: more than {max_bytes} bytes, or too many header "
                         "lines, in one part", {"max_part_header_bytes": max_bytes}, headers={"Connection": "close"})


async def read_upload(request: Request, fields: Sequence[str], *, max_parts: int = DEFAULT_MAX_PARTS,
                      max_header_bytes: int = MAX_PART_HEADER_BYTES) -> Upload:
    """The first multipart part named one of ``fields`` (in that order of preference), in memory.

    422 when the body is not ``multipart/form-data`` or has no such field; 400 when it is malformed;
    413 past ``max_parts`` parts or ``max_header_bytes`` of one part's headers, as soon as the parser
    meets them. Other parts are parsed and dropped. The size limit is enforced by :class:`BodyLimitMiddleware`.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    wanted = " or ".join(repr(f) for f in fields)
    ctype = request.headers.get("content-type", "")
    mime, params = parse_options_header(ctype)
    if mime != b"multipart/form-data":
        raise ApiError(422, f"expected a multipart/form-data body with the audio file in field {wanted}",
                       {"content_type": ctype or None, "fields": list(fields)})
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart/form-data body without a boundary in its Content-Type")

    targets = {f.encode() for f in fields}
    found: dict[bytes, tuple[bytearray, str | None]] = {}
    ended: list[bool] = []
    state: dict[str, Any] = {"ctype": None, "hname": b"", "hvalue": b"", "disp": b"", "sink": None, "parts": 0,
                             "hbytes": 0}

    def on_part_begin() -> None:
        state["parts"] += 1
        if state["parts"] > max_parts:
            raise too_many_parts(max_parts)
        state.update(ctype=None, disp=b"", sink=None, hbytes=0)

    def header_bytes(n: int) -> None:
        state["hbytes"] += n
        if state["hbytes"] > max_header_bytes:
            raise part_header_too_large(max_header_bytes)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_bytes(end - start)
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_bytes(end - start)
        state["hvalue"] += data[start:end]

    def on_header_end() -> None:
        name = state["hname"].lower()
        if name == b"content-disposition":
            state["disp"] = state["hvalue"]
        elif name == b"content-type":
            state["ctype"] = state["hvalue"].decode("latin-1")
        state["hname"], state["hvalue"] = b"", b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(state["disp"])
        name = options.get(b"name")
        if name in targets and name not in found:
            buf = bytearray()
            found[name] = (buf, state["ctype"])
            state["sink"] = buf

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["sink"] is not None:
            state["sink"] += data[start:end]

    def on_part_end() -> None:
        state["sink"] = None

    def on_end() -> None:
        ended.append(True)

    # recent python-multipart releases also bound each header line and the header lines per part themselves
    own_limits = {"max_header_size": max_header_bytes} if _parser_has_limits(MultipartParser) else {}
    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end,
    }, **own_limits)
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        if "Maximum header" in str(e):
            raise part_header_too_large(max_header_bytes) from e
        raise ApiError(400, f"malformed multipart/form-data body: {e}") from e
    if not ended:
        raise ApiError(400, "incomplete multipart/form-data body: it ends before its closing boundary")
    for f in fields:
        key = f.encode()
        if key in found:
            buf, part_type = found[key]
            return Upload(field=f, content_type=part_type, data=bytes(buf))
    raise ApiError(422, f"missing multipart field {wanted} (the audio file)", {"fields": list(fields)})

"""The API key: ``X-API-Key`` or ``Authorization: Bearer``, compared in constant time; :data:`OPEN_ROUTES` stay open."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from emovox.server.context import app_settings
from emovox.server.uploads import ApiError

#: Routes that stay open when an API key is set: health, probes, metrics, the web page and the API docs.
OPEN_ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/ui", "/ui/app.js", "/ui/style.css", "/docs",
               "/docs/oauth2-redirect", "/redoc", "/openapi.json")


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's EMOVOX_API_KEY")
_bearer = HTTPBearer(auto_error=False, description="the service's EMOVOX_API_KEY as a bearer token")


def key_ok(expected: str | None, *candidates: str | None) -> bool:
    """Whether any candidate is the key, in constant time: the SHA-256 digests are compared with
    :func:`hmac.compare_digest` (equal lengths, so not even the key's length shows), every candidate checked."""
    if not expected:
        return True
    want = hashlib.sha256(expected.encode()).digest()
    ok = False
    for c in candidates:
        if c is not None:
            ok |= hmac.compare_digest(hashlib.sha256(c.encode("utf-8", "surrogateescape")).digest(), want)
    return ok


async def require_key(request: Request, key: str | None = Depends(_api_key_header),
                      bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    expected = app_settings(request).api_key
    if not key_ok(expected, key, bearer.credentials if bearer else None):
        raise ApiError(401, "missing or invalid API key: send it in the X-API-Key header or as "
                            "'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})

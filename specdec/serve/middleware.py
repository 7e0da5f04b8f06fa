"""Two plain ASGI wrappers around the routes: the API key check, and one log line per request.

Plain ASGI (not Starlette's BaseHTTPMiddleware) so streamed responses pass through as they
are produced, and the log line is written when the stream has ended."""
from __future__ import annotations

import hmac
import logging
import time

from starlette.responses import JSONResponse

from .errors import APIError

log = logging.getLogger("specdec.serve")


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class RequireAPIKey:
    """With a key, every request needs `Authorization: Bearer <key>`; the comparison takes
    the same time whatever the first wrong byte (hmac.compare_digest)."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.key is not None:
            error = self._check(dict(scope.get("headers") or []).get(b"authorization"))
            if error is not None:
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check(self, header: bytes | None) -> APIError | None:
        how = ("send the header `Authorization: Bearer <key>` with the key the server was "
               "started with (--api-key or $SPECDEC_API_KEY)")
        scheme, _, given = (header or b"").partition(b" ")
        if header is None or scheme.lower() != b"bearer":
            return APIError(401, f"missing API key: {how}", code="invalid_api_key",
                            headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip(), self.key):
            return APIError(401, f"invalid API key: {how}", code="invalid_api_key",
                            headers={"WWW-Authenticate": "Bearer"})
        return None


class RequestLog:
    """One line per request: method, path, status, tokens (prompt+completion, when the
    route generated), seconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]  # what the client gets when the app fails before answering
        state = scope.setdefault("state", {})  # Starlette's request.state writes here

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            tokens = state.get("tokens")
            log.info("%s %s %d%s %.2fs", scope["method"], scope["path"], status[0],
                     f" tokens={tokens}" if tokens else "", time.perf_counter() - started)

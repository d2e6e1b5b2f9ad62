"""Daytona's error envelope `{"statusCode","message","code","source"}` as aiohttp responses."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

#: `source` values the SDK maps to its error classes.
SOURCE_API = "DAYTONA_API"
SOURCE_DAEMON = "DAYTONA_DAEMON"
SOURCE_PROXY = "DAYTONA_PROXY"

_DEFAULT_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    410: "GONE",
    422: "UNPROCESSABLE_ENTITY",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(
    status: int,
    message: str,
    *,
    code: str | None = None,
    source: str = SOURCE_API,
    path: str = "",
    method: str = "",
) -> dict[str, Any]:
    """The JSON body of an error (the toolbox's `ErrorResponse` also wants `path` and `timestamp`)."""
    return {
        "statusCode": status,
        "message": message,
        "code": code or _DEFAULT_CODES.get(status, "ERROR"),
        "source": source,
        "path": path,
        "method": method,
        "timestamp": now_iso(),
    }


def error_response(
    request: web.BaseRequest | None,
    status: int,
    message: str,
    *,
    code: str | None = None,
    source: str = SOURCE_API,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = envelope(
        status,
        message,
        code=code,
        source=source,
        path=request.path if request is not None else "",
        method=request.method if request is not None else "",
    )
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


class EmulatorError(Exception):
    """Raised by handlers; the middleware turns it into an error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        source: str = SOURCE_API,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.source = source
        self.headers = headers

    def response(self, request: web.BaseRequest) -> web.Response:
        return error_response(
            request, self.status, self.message, code=self.code, source=self.source, headers=self.headers
        )

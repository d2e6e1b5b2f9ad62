"""Daytona SDK errors → metaflow-sandbox's typed errors (each message names the cause and the fix).

| SDK error | becomes |
| --- | --- |
| HTTP 401 / 403 | `AuthError` naming DAYTONA_API_KEY |
| HTTP 429 | `UnavailableError` (retryable, `retry_after` from `Retry-After`) |
| HTTP 5xx, time-outs | `UnavailableError` (retryable) |
| connection refused, DNS failure | `UnavailableError(retryable=False)` naming the API URL |
| HTTP 400 / 404 / 409 / 422 on create | `ConfigError` (the request itself is wrong) |
| anything else | `SandboxError` |
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

from metaflow_sandbox_core import AuthError, ConfigError, SandboxError, UnavailableError

from .sdk import sdk

KEY_HELP = "create one at https://app.daytona.io/dashboard/keys and export DAYTONA_API_KEY=<key>"


def is_daytona_error(error: BaseException) -> bool:
    return isinstance(error, sdk().DaytonaError)


def status_of(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, sdk().DaytonaNotFoundError) or status_of(error) == 404


def is_connection_error(error: BaseException) -> bool:
    """Could not talk to the API at all (refused, DNS, reset) — not a time-out."""
    errors = sdk()
    return isinstance(error, errors.DaytonaConnectionError) and not isinstance(
        error, errors.DaytonaTimeoutError
    )


def retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), if any."""
    if not headers:
        return None
    value = next((str(v) for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _message(error: BaseException) -> str:
    return str(getattr(error, "message", None) or error).strip() or type(error).__name__


def translate(
    error: BaseException,
    *,
    api_url: str,
    action: str,
    request_is_config: bool = False,
    control_plane: bool = True,
) -> SandboxError:
    """The typed error for an SDK error raised while trying to `action` (e.g. "create a sandbox").

    `control_plane`: the request went to Daytona's API (a 403 there is about the key); inside a sandbox
    (files, commands) a 403 is the sandbox refusing a path, not a credentials problem.
    """
    if isinstance(error, SandboxError):
        return error
    errors = sdk()
    message = _message(error)
    if not isinstance(error, errors.DaytonaError):
        return SandboxError(f"Daytona: could not {action}: {type(error).__name__}: {message}")
    status = status_of(error)
    if isinstance(error, errors.DaytonaAuthenticationError) or status == 401:
        return AuthError(
            f"Daytona rejected DAYTONA_API_KEY (HTTP 401: {message}) when trying to {action} at {api_url}; "
            f"set a valid key: {KEY_HELP}."
        )
    if not control_plane and status == 403:
        return SandboxError(f"Daytona: could not {action}: permission denied ({message})")
    if isinstance(error, errors.DaytonaForbiddenError) or status == 403:
        return AuthError(
            f"Daytona refused to {action} with DAYTONA_API_KEY (HTTP 403: {message}); use a key with the "
            f"sandbox permissions (write:sandboxes, delete:sandboxes): {KEY_HELP}."
        )
    if isinstance(error, errors.DaytonaRateLimitError) or status == 429:
        return UnavailableError(
            f"Daytona is rate limiting requests (HTTP 429: {message}) when trying to {action}; retry later "
            "or lower METAFLOW_SANDBOX_DAYTONA_CREATES_PER_MINUTE.",
            retry_after=retry_after(getattr(error, "headers", None)),
        )
    if status is not None and status >= 500:
        return UnavailableError(f"Daytona could not {action} (HTTP {status}: {message}); retry later.")
    if is_connection_error(error):
        return UnavailableError(
            f"Cannot reach the Daytona API at {api_url} to {action} ({message}). Check DAYTONA_API_URL and "
            "this machine's network.",
            retryable=False,
        )
    if isinstance(error, errors.DaytonaTimeoutError):
        return UnavailableError(f"Daytona timed out when trying to {action} ({message}); retry later.")
    if request_is_config and status in (400, 404, 409, 422):
        return ConfigError(
            f"Daytona refused to {action} (HTTP {status}: {message}). Fix the sandbox settings."
        )
    return SandboxError(f"Daytona: could not {action}: {message}")

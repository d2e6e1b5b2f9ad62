"""The e2b SDK (imported on first use) and its errors → metaflow-sandbox's typed errors.

| SDK error | becomes |
| --- | --- |
| `AuthenticationException` (401) | `AuthError` naming E2B_API_KEY |
| `RateLimitException` (429), `ServiceBusyException` (503), HTTP 5xx, time-outs | `UnavailableError` (retryable) |
| connection refused, DNS failure | `UnavailableError(retryable=False)` naming the API URL |
| `InvalidArgumentException`, `TemplateException`, HTTP 400/404 on create | `ConfigError` |
| anything else | `SandboxError` |
"""

from __future__ import annotations

import os
from types import ModuleType

from metaflow_sandbox_core import AuthError, ConfigError, SandboxError, UnavailableError, install_hint

KEY_HELP = "create one at https://e2b.dev/dashboard?tab=keys and export E2B_API_KEY=<key>"


def sdk() -> ModuleType:
    """The `e2b` package; `ConfigError` with the install command when it is missing."""
    try:
        import e2b
    except ImportError as error:
        raise ConfigError(
            f"The e2b sandbox backend needs the E2B SDK, which cannot be imported ({error}). "
            f"Install it with: {install_hint('e2b')}"
        ) from None
    return e2b


def api_url() -> str:
    """Where the SDK sends control-plane requests (its own settings: E2B_API_URL, E2B_DOMAIN)."""
    return os.environ.get("E2B_API_URL") or f"https://api.{os.environ.get('E2B_DOMAIN') or 'e2b.app'}"


def _unreachable(error: BaseException) -> bool:
    import httpx

    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError)):
        return True
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and _unreachable(cause)


def translate(error: BaseException, action: str, request_is_config: bool = False) -> SandboxError:
    """The typed error for an SDK error raised while trying to `action` (e.g. "create a sandbox")."""
    if isinstance(error, SandboxError):
        return error
    e2b = sdk()
    message = str(error).strip() or type(error).__name__
    status = getattr(error, "status_code", None)
    if isinstance(error, e2b.AuthenticationException):
        return AuthError(f"E2B rejected E2B_API_KEY when trying to {action} ({message}); {KEY_HELP}.")
    if isinstance(error, e2b.RateLimitException) or status == 429:
        return UnavailableError(
            f"E2B is rate limiting requests when trying to {action} ({message}); retry later or lower "
            "METAFLOW_SANDBOX_E2B_CREATES_PER_MINUTE."
        )
    if isinstance(error, e2b.ServiceBusyException) or (isinstance(status, int) and status >= 500):
        return UnavailableError(f"E2B could not {action} ({message}); retry later.")
    if _unreachable(error):
        return UnavailableError(
            f"Cannot reach the E2B API at {api_url()} to {action} ({message}). Check E2B_API_URL / E2B_DOMAIN "
            "and this machine's network.",
            retryable=False,
        )
    if isinstance(error, e2b.TimeoutException):
        return UnavailableError(f"E2B timed out when trying to {action} ({message}); retry later.")
    if request_is_config and (
        isinstance(error, (e2b.InvalidArgumentException, e2b.TemplateException, e2b.NotFoundException))
        or status in (400, 404)
    ):
        return ConfigError(f"E2B refused to {action} ({message}). Fix the template or sandbox settings.")
    return SandboxError(f"E2B: could not {action}: {type(error).__name__}: {message}")

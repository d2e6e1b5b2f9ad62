"""The boxlite SDK, imported on first use, and its errors as core's typed errors."""

from __future__ import annotations

from types import ModuleType

from metaflow_sandbox_core import AuthError, ConfigError, SandboxError, UnavailableError, install_hint

#: boxlite errors that may pass: the service or the host is busy or unreachable for now.
TRANSIENT = (
    "UpstreamUnavailableError",
    "ResourceExhaustedError",
    "NetworkError",
    "TimeoutError",
    "SessionReapedError",
)
#: boxlite errors caused by the request (an image, an option): retrying cannot help.
REQUEST = ("InvalidArgumentError", "UnsupportedError", "ImageError", "AlreadyExistsError")


def sdk() -> ModuleType:
    """The `boxlite` package; `ConfigError` with the install command when it is missing."""
    try:
        import boxlite
    except ImportError as error:
        raise ConfigError(
            f"The boxlite sandbox backend needs the boxlite SDK, which cannot be imported ({error}). "
            f"Install it with: {install_hint('boxlite')}"
        ) from None
    return boxlite


def is_not_found(error: BaseException) -> bool:
    return type(error).__name__ == "NotFoundError" and type(error).__module__.startswith("boxlite")


def translate(error: BaseException, action: str, where: str) -> SandboxError:
    """A boxlite SDK exception as a typed error naming what failed (`action`) and where (`where`)."""
    kind = type(error).__name__
    text = str(error).strip().splitlines()[0] if str(error).strip() else kind
    message = f"boxlite could not {action} ({where}): {text}"
    if kind == "ConfigError" and ("auth" in text.lower() or "unauthenticated" in text.lower()):
        return AuthError(f"{message}. Set BOXLITE_API_KEY to a key the server accepts.")
    if kind in TRANSIENT or "connect" in text.lower():
        return UnavailableError(message)
    if kind in REQUEST:
        return ConfigError(message)
    return SandboxError(message)

"""Typed errors. Every message names the cause and the fix."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class of every metaflow-sandbox error."""

    #: True when trying again later may succeed (infrastructure hiccup, rate limit).
    retryable = False


class ConfigError(SandboxError):
    """The user's input or set-up is wrong; nothing was created."""


class BackendNotInstalledError(ConfigError):
    """A known backend whose package is not installed."""


class AuthError(SandboxError):
    """Credentials for the provider are missing or rejected."""


class UnavailableError(SandboxError):
    """The backend cannot serve right now (5xx, 429, boot failure); retryable with backoff."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None, retryable: bool = True):
        super().__init__(message)
        self.retry_after = retry_after
        self.retryable = retryable


class SandboxTimeoutError(SandboxError):
    """A command ran past its time limit and was killed."""

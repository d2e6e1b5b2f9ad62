"""The Daytona SDK, imported on first use: a missing SDK is a `ConfigError` naming the install command."""

from __future__ import annotations

from types import ModuleType

from metaflow_sandbox_core import ConfigError, install_hint


def sdk() -> ModuleType:
    """The `daytona` package; `ConfigError` with the install command when it is missing."""
    try:
        import daytona
    except ImportError as error:
        raise ConfigError(
            f"The daytona sandbox backend needs the Daytona SDK, which cannot be imported ({error}). "
            f"Install it with: {install_hint('daytona')}"
        ) from None
    return daytona

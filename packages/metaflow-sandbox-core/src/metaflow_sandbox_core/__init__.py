"""The backend contract of metaflow-sandbox (standard library only)."""

from .backend import Backend, Capabilities, Isolation, OutputCallback, Sandbox, SandboxInfo
from .errors import (
    AuthError,
    BackendNotInstalledError,
    ConfigError,
    SandboxError,
    SandboxTimeoutError,
    UnavailableError,
)
from .registry import (
    ENTRY_POINT_GROUP,
    KNOWN_BACKENDS,
    available_backends,
    backend_class,
    install_hint,
    load_backend,
    pick_default_backend,
)
from .retry import call_with_retries
from .spec import Mount, NetworkPolicy, SandboxSpec, env_problem
from .state_dir import default_state_dir

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "KNOWN_BACKENDS",
    "AuthError",
    "Backend",
    "BackendNotInstalledError",
    "Capabilities",
    "ConfigError",
    "Isolation",
    "Mount",
    "NetworkPolicy",
    "OutputCallback",
    "Sandbox",
    "SandboxError",
    "SandboxInfo",
    "SandboxSpec",
    "SandboxTimeoutError",
    "UnavailableError",
    "available_backends",
    "backend_class",
    "call_with_retries",
    "default_state_dir",
    "env_problem",
    "install_hint",
    "load_backend",
    "pick_default_backend",
]

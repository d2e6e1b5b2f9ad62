"""The backend contract of metaflow-sandbox and the machinery every backend shares (standard library only).

Async SDKs: see `metaflow_sandbox_core.aio` (imported on its own, so that plain users do not import asyncio).
"""

from .backend import Backend, Capabilities, Isolation, SandboxInfo, labels_match
from .egress import Destination, EgressKind, check_egress_kinds, parse_allow_list, parse_destination
from .errors import (
    AuthError,
    BackendNotInstalledError,
    ConfigError,
    SandboxError,
    SandboxTimeoutError,
    UnavailableError,
)
from .limiter import CreateLimiter, create_limits, setting_name
from .output import MAX_LINE_BYTES, LineSplitter, OutputCallback, neutralize_controls
from .process import PipeCommand, exit_code, kill_process_group
from .registry import (
    ENTRY_POINT_GROUP,
    KNOWN_BACKENDS,
    available_backends,
    backend_class,
    install_hint,
    load_backend,
    pick_default_backend,
)
from .retry import RetryPolicy, call_with_retries, call_with_retries_async
from .sandbox import KILLED, Command, Sandbox, Started, check_argv, check_cwd, check_env
from .spec import Mount, NetworkPolicy, SandboxSpec, env_problem
from .state_dir import default_state_dir

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "KILLED",
    "KNOWN_BACKENDS",
    "MAX_LINE_BYTES",
    "AuthError",
    "Backend",
    "BackendNotInstalledError",
    "Capabilities",
    "Command",
    "ConfigError",
    "CreateLimiter",
    "Destination",
    "EgressKind",
    "Isolation",
    "LineSplitter",
    "Mount",
    "NetworkPolicy",
    "OutputCallback",
    "PipeCommand",
    "RetryPolicy",
    "Sandbox",
    "SandboxError",
    "SandboxInfo",
    "SandboxSpec",
    "SandboxTimeoutError",
    "Started",
    "UnavailableError",
    "available_backends",
    "backend_class",
    "call_with_retries",
    "call_with_retries_async",
    "check_argv",
    "check_cwd",
    "check_egress_kinds",
    "check_env",
    "create_limits",
    "default_state_dir",
    "env_problem",
    "exit_code",
    "install_hint",
    "kill_process_group",
    "labels_match",
    "load_backend",
    "neutralize_controls",
    "parse_allow_list",
    "parse_destination",
    "pick_default_backend",
    "setting_name",
]

"""The shell command a Daytona session runs for `Sandbox.run(argv, env=, cwd=)`.

A session command is one string for the sandbox's shell, so argv, environment and working directory are
quoted into it (`shlex`): `(cd -- <cwd> && exec env -- K=V ... <argv>)`. The subshell keeps an `exit` or a
signal from ending the session's own shell; `exec` makes the command's exit status (128 + N when killed by
signal N) the session command's exit code. Only the given environment is added; nothing of the launcher's.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from metaflow_sandbox_core import ConfigError


def shell_command(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> str:
    if not argv:
        raise ConfigError("run() needs a command: argv is empty.")
    for arg in argv:
        if "\0" in arg:
            raise ConfigError(f"argv element {arg!r} contains a NUL byte, which no command line can carry.")
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ConfigError(
                f"env[{name!r}]: names must be non-empty without '=' or NUL, and values without NUL."
            )
    program = shlex.join(argv)
    if env:
        assignments = " ".join(shlex.quote(f"{name}={value}") for name, value in env.items())
        program = f"env -- {assignments} {program}"
    return f"(cd -- {shlex.quote(cwd)} && exec {program})"

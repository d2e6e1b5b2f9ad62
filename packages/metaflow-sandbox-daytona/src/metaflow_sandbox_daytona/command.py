"""The shell command a Daytona session runs for `Sandbox.run(argv, env=, cwd=)`.

A session command is one string for the sandbox's shell, so argv, environment and working directory are
quoted into it (`shlex`): `(cd -- <cwd> && exec env -- K=V ... <argv>)`. The subshell keeps an `exit` or a
signal from ending the session's own shell; `exec` makes the command's exit status (128 + N when killed by
signal N) the session command's exit code. Only the given environment is added; nothing of the launcher's.
The arguments were checked by `Sandbox.run` (no NUL bytes, no '=' in names).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence


def shell_command(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> str:
    program = shlex.join(argv)
    if env:
        assignments = " ".join(shlex.quote(f"{name}={value}") for name, value in env.items())
        program = f"env -- {assignments} {program}"
    return f"(cd -- {shlex.quote(cwd)} && exec {program})"

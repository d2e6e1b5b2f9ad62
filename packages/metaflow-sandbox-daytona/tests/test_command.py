"""The session command string (quoting), without a server. Argument checks and line splitting are core's
(`Sandbox.run`), tested there and by the conformance suite."""

from __future__ import annotations

import subprocess

from metaflow_sandbox_daytona.command import shell_command

AWKWARD = ["a b", "it's", '"dq"', "$HOME", "`id`", "$(id)", "line\nbreak", "", "*", "-n", "grüße ✓", "\\"]


def run_sh(command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, env=env or {"PATH": "/usr/bin:/bin"}
    )


def test_argv_survives_the_shell_exactly(tmp_path: object) -> None:
    command = shell_command(["printf", "%s\\0", *AWKWARD], {}, "/")
    assert run_sh(command).stdout.split(b"\0")[:-1] == [arg.encode() for arg in AWKWARD]


def test_env_and_cwd_are_applied_and_later_values_win(tmp_path: object) -> None:
    env = {"PLAIN": "x", "QUOTED": 'it\'s "q" $HOME `x`\n', "EMPTY": ""}
    command = shell_command(
        ["sh", "-c", 'printf "%s|%s|%s|%s" "$PLAIN" "$QUOTED" "$EMPTY" "$PWD"'], env, str(tmp_path)
    )
    result = run_sh(command)
    assert result.stdout.decode() == f'x|it\'s "q" $HOME `x`\n||{tmp_path}'


def test_exit_codes_and_signals_come_back_as_is() -> None:
    assert run_sh(shell_command(["sh", "-c", "exit 7"], {}, "/")).returncode == 7
    assert run_sh(shell_command(["sh", "-c", "kill -9 $$"], {"A": "1"}, "/")).returncode == 137

"""The session command string (quoting) and the line splitter, without a server."""

from __future__ import annotations

import subprocess

import pytest

from metaflow_sandbox_core import ConfigError
from metaflow_sandbox_daytona.command import shell_command
from metaflow_sandbox_daytona.streaming import MAX_PIECE, LineSplitter

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


def test_refuses_what_no_command_line_can_carry() -> None:
    with pytest.raises(ConfigError, match="argv is empty"):
        shell_command([], {}, "/")
    with pytest.raises(ConfigError, match="NUL"):
        shell_command(["echo", "a\0b"], {}, "/")
    with pytest.raises(ConfigError, match="names"):
        shell_command(["true"], {"A=B": "x"}, "/")


def test_line_splitter_cuts_lines_across_chunks_per_stream() -> None:
    seen: list[tuple[str, bytes]] = []
    lines = LineSplitter(lambda stream, line: seen.append((stream, line)))
    lines.feed("stdout", b"one\ntw")
    lines.feed("stderr", b"e1\ne")
    lines.feed("stdout", b"o\nthr")
    lines.feed("stderr", b"2")
    lines.flush()
    assert [line for stream, line in seen if stream == "stdout"] == [b"one\n", b"two\n", b"thr"]
    assert [line for stream, line in seen if stream == "stderr"] == [b"e1\n", b"e2"]


def test_line_splitter_delivers_long_lines_in_pieces() -> None:
    seen: list[bytes] = []
    lines = LineSplitter(lambda stream, line: seen.append(line))
    for _ in range(5):
        lines.feed("stdout", b"x" * (MAX_PIECE // 2))
    lines.feed("stdout", b"\n")
    lines.flush()
    assert b"".join(seen) == b"x" * (5 * MAX_PIECE // 2) + b"\n"
    assert max(len(piece) for piece in seen) <= MAX_PIECE

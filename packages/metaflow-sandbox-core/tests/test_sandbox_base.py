"""The base `Sandbox`: argument checks, the destroyed guard, deadlines, line splitting, in-order delivery, and
destroy from anywhere; `PipeCommand`; `LineSplitter`. Against scripted commands and host processes."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from local_backend import LocalBackend, LocalSandbox

from metaflow_sandbox_core import (
    KILLED,
    MAX_LINE_BYTES,
    Command,
    ConfigError,
    LineSplitter,
    Sandbox,
    SandboxError,
    SandboxSpec,
    SandboxTimeoutError,
    check_argv,
    check_cwd,
    check_env,
)
from metaflow_sandbox_core.sandbox import Event

# -- line splitting --------------------------------------------------------------------------------------


def split(chunks: list[tuple[str, bytes]], max_line: int = 1024) -> list[tuple[str, bytes]]:
    lines: list[tuple[str, bytes]] = []
    splitter = LineSplitter(lambda stream, line: lines.append((stream, line)), max_line=max_line)
    for stream, chunk in chunks:
        splitter.feed(stream, chunk)
    splitter.flush()
    return lines


def test_lines_are_rejoined_across_chunks_per_stream() -> None:
    out = [
        ("stdout", b"a"),
        ("stderr", b"e1\ne"),
        ("stdout", b"b\nc"),
        ("stdout", b"d\n\n"),
        ("stderr", b"2"),
    ]
    seen = split([*out, ("stdout", b"e")])
    assert [line for stream, line in seen if stream == "stdout"] == [b"ab\n", b"cd\n", b"\n", b"e"]
    assert [line for stream, line in seen if stream == "stderr"] == [b"e1\n", b"e2"]


def test_only_newline_separates_lines() -> None:
    assert split([("stdout", b"carriage\rreturn\x0bvt\x1cfs\n")]) == [
        ("stdout", b"carriage\rreturn\x0bvt\x1cfs\n")
    ]


def test_newline_free_output_is_delivered_in_bounded_pieces() -> None:
    pieces = [line for _, line in split([("stdout", b"x" * 1500), ("stdout", b"x" * 1000)], max_line=1000)]
    assert pieces == [b"x" * 1000, b"x" * 1000, b"x" * 500]
    assert MAX_LINE_BYTES == 1024 * 1024


def test_without_callback_output_is_discarded() -> None:
    splitter = LineSplitter(None)
    splitter.feed("stdout", b"no newline " * 1000)
    splitter.flush()


# -- argument checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [[], "echo hi", b"echo", ["sh", 3], ["a\0b"], None])
def test_argv_must_be_a_list_of_strings(bad: object) -> None:
    with pytest.raises(ConfigError, match="argv"):
        check_argv(bad)  # type: ignore[arg-type]
    assert check_argv(("sh", "-c", "")) == ["sh", "-c", ""]


@pytest.mark.parametrize("bad", [{"A=B": "x"}, {"": "x"}, {"A": "nul\0byte"}, {"A": 1}, {1: "a"}])
def test_env_refuses_what_no_environment_can_carry(bad: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="env"):
        check_env(bad)
    assert check_env({"A": "", "B": "x=y\n"}) == {"A": "", "B": "x=y\n"}


@pytest.mark.parametrize("bad", ["relative", "", "/a\0b", 3])
def test_cwd_must_be_absolute(bad: object) -> None:
    with pytest.raises(ConfigError, match="cwd"):
        check_cwd(bad)  # type: ignore[arg-type]


# -- the base class with scripted commands ---------------------------------------------------------------


class ScriptedCommand(Command):
    """Events fed by the test through `events`; `kill` ends the command with 137."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.killed = 0
        self.closed = 0

    def next(self, timeout: float) -> Event:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def kill(self) -> None:
        self.killed += 1
        self.events.put(KILLED)

    def close(self) -> None:
        self.closed += 1


class ScriptedSandbox(Sandbox):
    def __init__(self, spec: SandboxSpec | None = None):
        super().__init__("scripted-1", spec or SandboxSpec())
        self.commands: list[ScriptedCommand] = []
        self.started: list[tuple[list[str], dict[str, str], str]] = []
        self.files: dict[str, bytes] = {}
        self.destroy_calls = 0
        self.script: Callable[[ScriptedCommand], None] = lambda command: None

    def _start(self, argv: list[str], env: dict[str, str], cwd: str) -> Command:
        command = ScriptedCommand()
        self.commands.append(command)
        self.started.append((argv, env, cwd))
        self.script(command)
        return command

    def _write_file(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def _read_file(self, path: str) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def _destroy(self) -> None:
        self.destroy_calls += 1
        time.sleep(0.05)  # long enough for concurrent callers to pile up


def test_run_checks_arguments_and_merges_env() -> None:
    sandbox = ScriptedSandbox(SandboxSpec(env={"A": "spec", "B": "spec"}))
    sandbox.script = lambda command: command.events.put(0)
    assert sandbox.run(("true",), env={"B": "run"}) == 0
    assert sandbox.started == [(["true"], {"A": "spec", "B": "run"}, "/tmp")]
    for bad in ({"argv": []}, {"argv": ["true"], "cwd": "rel"}, {"argv": ["true"], "timeout": 0}):
        with pytest.raises(ConfigError):
            sandbox.run(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="env"):
        sandbox.run(["true"], env={"A=B": "x"})
    assert len(sandbox.started) == 1, "a command was started with bad arguments"


def test_output_is_delivered_in_order_as_lines_then_the_exit_code() -> None:
    sandbox = ScriptedSandbox()

    def script(command: ScriptedCommand) -> None:
        for event in [("stdout", b"one\ntw"), ("stderr", b"err"), ("stdout", b"o\n"), ("stdout", b"tail"), 3]:
            command.events.put(event)

    sandbox.script = script
    seen: list[tuple[str, bytes]] = []
    assert sandbox.run(["x"], on_output=lambda stream, line: seen.append((stream, line))) == 3
    assert seen == [("stdout", b"one\n"), ("stdout", b"two\n"), ("stdout", b"tail"), ("stderr", b"err")]
    assert sandbox.commands[0].closed == 1 and sandbox.commands[0].killed == 0


def test_timeout_kills_drains_and_names_the_limit() -> None:
    sandbox = ScriptedSandbox()
    sandbox.script = lambda command: command.events.put(("stdout", b"partial"))
    seen: list[bytes] = []
    started = time.monotonic()
    with pytest.raises(SandboxTimeoutError, match=r"'sleep' ran past its timeout of 0.3 s"):
        sandbox.run(["sleep"], timeout=0.3, on_output=lambda stream, line: seen.append(line))
    assert 0.3 <= time.monotonic() - started < 1.5
    assert seen == [b"partial"] and sandbox.commands[0].killed == 1


def test_endless_output_still_times_out() -> None:
    sandbox = ScriptedSandbox()
    stop = threading.Event()

    def script(command: ScriptedCommand) -> None:
        def feed() -> None:
            while not stop.is_set():
                command.events.put(("stdout", b"tick\n"))
                time.sleep(0.001)

        threading.Thread(target=feed, daemon=True).start()

    sandbox.script = script
    try:
        with pytest.raises(SandboxTimeoutError):
            sandbox.run(["yes"], timeout=0.5)
    finally:
        stop.set()


def test_lifetime_bounds_commands_then_refuses_to_start() -> None:
    sandbox = ScriptedSandbox(SandboxSpec(timeout=0.3))
    with pytest.raises(SandboxTimeoutError, match=r"lifetime \(SandboxSpec.timeout=0.3 s\)"):
        sandbox.run(["sleep"], timeout=60)
    with pytest.raises(SandboxTimeoutError, match=r"lifetime.*not started"):
        sandbox.run(["true"])
    assert len(sandbox.started) == 1


def test_exception_in_on_output_kills_and_propagates() -> None:
    sandbox = ScriptedSandbox()
    sandbox.script = lambda command: command.events.put(("stdout", b"hi\n"))

    def explode(stream: str, line: bytes) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        sandbox.run(["x"], on_output=explode)
    assert sandbox.commands[0].killed == 1 and sandbox.commands[0].closed == 1
    assert sandbox.running_commands() == []


def test_destroyed_guard() -> None:
    sandbox = ScriptedSandbox()
    sandbox.upload(b"data", "/tmp/f")
    assert sandbox.download("/tmp/f") == b"data"
    with pytest.raises(FileNotFoundError):
        sandbox.download("/tmp/missing")
    with sandbox:
        pass
    for action in (
        lambda: sandbox.run(["true"]),
        lambda: sandbox.upload(b"x", "/tmp/x"),
        lambda: sandbox.download("/tmp/f"),
    ):
        with pytest.raises(SandboxError, match="scripted-1 has been destroyed"):
            action()


def test_destroy_from_other_threads_is_done_once_and_ends_run_promptly() -> None:
    sandbox = ScriptedSandbox()
    results: list[object] = []
    runner = threading.Thread(target=lambda: results.append(sandbox.run(["sleep"])))
    runner.start()
    while not sandbox.commands:
        time.sleep(0.01)
    destroyers = [threading.Thread(target=sandbox.destroy) for _ in range(8)]
    for thread in destroyers:
        thread.start()
    for thread in destroyers:
        thread.join(5)
    runner.join(2)
    assert results == [KILLED] and sandbox.destroy_calls == 1
    assert sandbox.commands[0].killed == 0, "destroy must not need a kill per command"
    assert sandbox.commands[0].closed == 1


def test_destroy_from_on_output_returns_137() -> None:
    sandbox = ScriptedSandbox()
    sandbox.script = lambda command: command.events.put(("stdout", b"go\n"))
    assert sandbox.run(["x"], on_output=lambda stream, line: sandbox.destroy()) == KILLED
    assert sandbox.destroy_calls == 1


def test_command_error_propagates() -> None:
    class Lost(Command):
        def next(self, timeout: float) -> Event:
            raise SandboxError("the sandbox died")

        def kill(self) -> None:
            pass

    sandbox = ScriptedSandbox()
    sandbox._start = lambda argv, env, cwd: Lost()  # type: ignore[method-assign]
    with pytest.raises(SandboxError, match="died"):
        sandbox.run(["x"])


# -- with host processes (PipeCommand) -------------------------------------------------------------------


@pytest.fixture
def local() -> Iterator[LocalSandbox]:
    sandbox = LocalBackend().create(SandboxSpec())
    assert isinstance(sandbox, LocalSandbox)
    yield sandbox
    sandbox.destroy()


def run(sandbox: Sandbox, script: str, **kwargs: object) -> tuple[int, list[tuple[str, bytes]]]:
    seen: list[tuple[str, bytes]] = []
    kwargs.setdefault("timeout", 30)
    code = sandbox.run(["sh", "-c", script], on_output=lambda s, line: seen.append((s, line)), **kwargs)  # type: ignore[arg-type]
    return code, seen


def test_pipe_command_streams_both_pipes_and_exit_codes(local: LocalSandbox) -> None:
    code, seen = run(local, "echo out; echo err >&2; printf 'no newline'; exit 4")
    assert code == 4
    assert [line for s, line in seen if s == "stdout"] == [b"out\n", b"no newline"]
    assert [line for s, line in seen if s == "stderr"] == [b"err\n"]
    assert run(local, "kill -9 $$")[0] == 137
    assert run(local, "pwd")[1] == [("stdout", f"{local.workdir}\n".encode())]


def test_pipe_command_cuts_long_lines(local: LocalSandbox) -> None:
    size = 2 * MAX_LINE_BYTES + 5
    pieces: list[int] = []
    code = local.run(
        ["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x"],
        timeout=30,
        on_output=lambda s, line: pieces.append(len(line)),
    )
    assert code == 0 and pieces == [MAX_LINE_BYTES, MAX_LINE_BYTES, 5]


def test_pipe_command_timeout_when_pipes_are_closed(local: LocalSandbox) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxTimeoutError):
        local.run(["sh", "-c", "exec >&- 2>&-; sleep 30"], timeout=0.5)
    assert time.monotonic() - started < 3


def test_pipe_command_gives_up_on_pipes_a_descendant_keeps_open(local: LocalSandbox) -> None:
    started = time.monotonic()
    code, seen = run(local, "sleep 4 & echo parent done")
    assert code == 0 and seen == [("stdout", b"parent done\n")]
    assert time.monotonic() - started < 5


def test_destroy_ends_a_running_host_process(local: LocalSandbox) -> None:
    results: list[int] = []
    started = threading.Event()
    runner = threading.Thread(
        target=lambda: results.append(
            local.run(["sh", "-c", "echo up; sleep 30"], on_output=lambda s, line: started.set())
        )
    )
    runner.start()
    assert started.wait(10)
    local.destroy()
    runner.join(5)
    assert results == [KILLED] and local.destroy_calls == 1

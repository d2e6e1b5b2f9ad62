"""The async bridge: one loop thread per process, sync↔async calls, `AsyncCommand` (output produced on the
loop delivered on the caller's thread, bounded, cancellable), closers at exit; async retries."""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from metaflow_sandbox_core import (
    KILLED,
    Command,
    RetryPolicy,
    Sandbox,
    SandboxSpec,
    SandboxTimeoutError,
    UnavailableError,
    aio,
    call_with_retries_async,
)
from metaflow_sandbox_core.aio import AsyncCommand, Emit


def test_one_loop_thread_per_process() -> None:
    first = aio.loop()
    assert aio.loop() is first

    async def where() -> tuple[asyncio.AbstractEventLoop, str]:
        return asyncio.get_running_loop(), threading.current_thread().name

    results: list[tuple[asyncio.AbstractEventLoop, str]] = []
    threads = [threading.Thread(target=lambda: results.append(aio.call(where()))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [(first, "metaflow-sandbox-loop")] * 4


def test_call_returns_raises_and_cancels_on_timeout() -> None:
    async def fail() -> None:
        raise ValueError("from the loop")

    with pytest.raises(ValueError, match="from the loop"):
        aio.call(fail())
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(concurrent.futures.TimeoutError):
        aio.call(slow(), timeout=0.1)
    assert cancelled.wait(5), "the abandoned coroutine kept running"


async def produce(emit: Emit, chunks: int, code: int = 0) -> int:
    for index in range(chunks):
        await emit("stdout" if index % 2 == 0 else "stderr", f"{index}\n".encode())
    return code


def drain(command: Command, limit: float = 10.0) -> tuple[list[tuple[str, bytes]], int]:
    seen: list[tuple[str, bytes]] = []
    until = time.monotonic() + limit
    while time.monotonic() < until:
        event = command.next(0.1)
        if isinstance(event, int):
            return seen, event
        if event is not None:
            seen.append(event)
    raise AssertionError("the command did not end")


def test_async_command_delivers_in_order_and_returns_the_code() -> None:
    command = AsyncCommand(lambda emit: produce(emit, 200, code=5))
    seen, code = drain(command)
    assert code == 5 and [data for _, data in seen] == [f"{i}\n".encode() for i in range(200)]
    assert command.next(0) == 5, "the end is reported again"
    command.close()


def test_async_command_holds_only_capacity_chunks_in_flight() -> None:
    emitted = 0

    async def body(emit: Emit) -> int:
        nonlocal emitted
        for _ in range(100):
            await emit("stdout", b"x")
            emitted += 1
        return 0

    command = AsyncCommand(body, capacity=4)
    time.sleep(0.3)  # the caller reads nothing meanwhile
    assert emitted <= 5, "output piled up although the caller did not read"
    seen, code = drain(command)
    assert code == 0 and len(seen) == 100 and emitted == 100


def test_async_command_kill_runs_the_kill_coroutine_then_cancels() -> None:
    killed = threading.Event()
    cancelled = threading.Event()

    async def body(emit: Emit) -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    async def kill() -> None:
        killed.set()

    command = AsyncCommand(body, kill=kill)
    command.kill()
    command.kill()  # idempotent
    assert killed.is_set() and cancelled.wait(5)
    assert drain(command)[1] == KILLED


def test_async_command_body_errors_propagate() -> None:
    async def body(emit: Emit) -> int:
        await emit("stdout", b"before\n")
        raise RuntimeError("lost the sandbox")

    command = AsyncCommand(body)
    assert command.next(5) == ("stdout", b"before\n")
    with pytest.raises(RuntimeError, match="lost the sandbox"):
        drain(command)


class AsyncSandbox(Sandbox):
    """What an async-SDK backend looks like: each hook is a coroutine on the shared loop."""

    def __init__(self) -> None:
        super().__init__("async-1", SandboxSpec())
        self.files: dict[str, bytes] = {}
        self.kills = 0

    def _start(self, argv: list[str], env: dict[str, str], cwd: str) -> Command:
        async def body(emit: Emit) -> int:
            for word in argv[1:]:
                await emit("stdout", word.encode() + b" ")
                await asyncio.sleep(0.01)
            if argv[0] == "hang":
                await asyncio.sleep(30)
            return 0

        async def kill() -> None:
            self.kills += 1

        return AsyncCommand(body, kill=kill)

    def _write_file(self, path: str, data: bytes) -> None:
        async def write() -> None:
            self.files[path] = data

        aio.call(write())

    def _read_file(self, path: str) -> bytes:
        return self.files[path]

    def _destroy(self) -> None:
        pass


def test_an_async_sandbox_streams_times_out_and_is_destroyed() -> None:
    sandbox = AsyncSandbox()
    lines: list[bytes] = []
    assert sandbox.run(["echo", "a", "b"], on_output=lambda s, line: lines.append(line)) == 0
    assert lines == [b"a b "]
    with pytest.raises(SandboxTimeoutError):
        sandbox.run(["hang", "x"], timeout=0.3)
    assert sandbox.kills == 1
    results: list[int] = []
    runner = threading.Thread(target=lambda: results.append(sandbox.run(["hang"])))
    runner.start()
    time.sleep(0.2)
    sandbox.destroy()
    runner.join(5)
    assert results == [KILLED]


def test_closers_run_at_exit_in_a_fresh_process() -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from metaflow_sandbox_core import aio

        async def close():
            await asyncio.sleep(0.05)
            print("closed", flush=True)

        aio.at_exit(close)
        undo = aio.at_exit(close)
        undo()
        aio.call(asyncio.sleep(0))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "closed\n" and "Task was destroyed" not in result.stderr


def test_importing_core_does_not_import_asyncio() -> None:
    script = "import sys, metaflow_sandbox_core; print('asyncio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_async_retries_share_the_policy_and_honour_retry_after() -> None:
    calls: list[int] = []
    waits: list[float] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise UnavailableError("429", retry_after=0.2)
        if len(calls) == 2:
            raise UnavailableError("503")
        return "ok"

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    result = aio.call(call_with_retries_async(flaky, sleep=sleep, base_delay=1))
    assert result == "ok" and len(calls) == 3
    assert 0.2 <= waits[0] <= 0.25 and 2 <= waits[1] <= 2.5  # Retry-After, then the second backoff step

    async def broken() -> None:
        raise UnavailableError("gone for good", retryable=False)

    with pytest.raises(UnavailableError):
        aio.call(call_with_retries_async(broken, sleep=sleep))
    policy = RetryPolicy(attempts=2, base_delay=1, jitter=0)
    assert policy.delay(UnavailableError("x"), 1) == 1 and policy.delay(UnavailableError("x"), 2) is None
    assert policy.delay(ValueError("not ours"), 1) is None

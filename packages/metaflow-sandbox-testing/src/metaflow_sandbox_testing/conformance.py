"""The conformance suite every metaflow-sandbox backend's tests subclass.

```python
class TestMyBackendConformance(BackendConformance):
    @pytest.fixture
    def backend(self) -> Backend:
        return MyBackend()
```

Commands inside the sandbox use only `sh` and coreutils, so any image with a POSIX userland works.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from metaflow_sandbox_core import (
    KILLED,
    MAX_LINE_BYTES,
    Backend,
    Capabilities,
    ConfigError,
    CreateLimiter,
    Sandbox,
    SandboxError,
    SandboxSpec,
    SandboxTimeoutError,
    Started,
)

#: Upper bound for commands that should finish quickly (keeps a broken backend from hanging the suite).
COMMAND_TIMEOUT = 60.0


@dataclass
class CapturedRun:
    """Everything one `Sandbox.run` delivered, with callback timing."""

    code: int = -1
    chunks: list[tuple[str, bytes, float]] = field(default_factory=list)

    def __call__(self, stream: str, line: bytes) -> None:
        self.chunks.append((stream, line, time.monotonic()))

    def output(self, stream: str) -> bytes:
        return b"".join(line for name, line, _ in self.chunks if name == stream)

    def lines(self, stream: str) -> list[bytes]:
        return [line for name, line, _ in self.chunks if name == stream]


def run_captured(sandbox: Sandbox, argv: Sequence[str], **kwargs: Any) -> CapturedRun:
    """Run `argv` keeping every line (only for small outputs)."""
    captured = CapturedRun()
    kwargs.setdefault("timeout", COMMAND_TIMEOUT)
    captured.code = sandbox.run(argv, on_output=captured, **kwargs)
    return captured


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def parse_env0(output: bytes) -> dict[str, str]:
    """Parse `env -0` output into a dict."""
    pairs = (entry.split(b"=", 1) for entry in output.split(b"\0") if b"=" in entry)
    return {key.decode(): value.decode() for key, value in pairs}


def peak_rss_bytes() -> int:
    """This process's peak resident set size."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Reset the peak RSS to the current RSS where Linux allows it (so growth is measured from now)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


class BackendConformance:
    """Behaviour every backend must have. Override the `backend` fixture (and optionally `spec_defaults`)."""

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError("Override the `backend` fixture to return the Backend under test.")

    @pytest.fixture
    def spec_defaults(self) -> dict[str, Any]:
        """Extra `SandboxSpec` keyword arguments for every sandbox of the suite (e.g. an image)."""
        return {}

    @pytest.fixture
    def make_spec(self, spec_defaults: dict[str, Any]) -> Callable[..., SandboxSpec]:
        def make(**overrides: Any) -> SandboxSpec:
            kwargs = {**spec_defaults, **overrides}
            for merged in ("env", "labels"):
                kwargs[merged] = {**spec_defaults.get(merged, {}), **overrides.get(merged, {})}
            return SandboxSpec(**kwargs)

        return make

    @pytest.fixture
    def create_sandbox(
        self, backend: Backend, make_spec: Callable[..., SandboxSpec]
    ) -> Iterator[Callable[..., Sandbox]]:
        """Creates sandboxes from `make_spec(**overrides)`; every one is destroyed after the test."""
        created: list[Sandbox] = []

        def create(**overrides: Any) -> Sandbox:
            sandbox = backend.create(make_spec(**overrides))
            created.append(sandbox)
            return sandbox

        yield create
        for sandbox in created:
            sandbox.destroy()

    @pytest.fixture
    def sandbox(self, create_sandbox: Callable[..., Sandbox]) -> Sandbox:
        return create_sandbox()

    # -- running commands ---------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("script", "expected"),
        [("exit 0", 0), ("exit 1", 1), ("exit 3", 3), ("kill -9 $$", 137)],
        ids=["exit-0", "exit-1", "exit-3", "sigkill-137"],
    )
    def test_exit_code(self, sandbox: Sandbox, script: str, expected: int) -> None:
        assert sandbox.run(sh(script), timeout=COMMAND_TIMEOUT) == expected

    def test_stdout_and_stderr_are_separate_and_ordered(self, sandbox: Sandbox) -> None:
        run = run_captured(sandbox, sh("for i in 1 2 3 4 5 6; do echo out$i; echo err$i >&2; done"))
        assert run.code == 0
        assert run.lines("stdout") == [f"out{i}\n".encode() for i in range(1, 7)]
        assert run.lines("stderr") == [f"err{i}\n".encode() for i in range(1, 7)]

    def test_final_line_without_newline_is_delivered(self, sandbox: Sandbox) -> None:
        run = run_captured(sandbox, sh("printf 'first\\nlast without newline'"))
        assert run.lines("stdout") == [b"first\n", b"last without newline"]

    def test_first_line_arrives_while_command_runs(self, sandbox: Sandbox) -> None:
        run = run_captured(sandbox, sh("echo first; sleep 2; echo second"))
        returned = time.monotonic()
        assert run.lines("stdout") == [b"first\n", b"second\n"]
        first_arrived = run.chunks[0][2]
        assert returned - first_arrived > 1.0, "the first line was only delivered when the command ended"

    def test_started_command_is_followed_after_its_marker(self, sandbox: Sandbox) -> None:
        """`start` then `read_until`: what came before the marker is consumed; what the command prints once
        it is given its work (a file uploaded after the marker) reaches `follow`, in order, with its code."""
        work = f"{sandbox.workdir.rstrip('/')}/conformance-work"
        started = sandbox.start(
            sh(
                "echo preparing; echo ready; "
                f"while [ ! -f {work} ]; do sleep 0.05; done; cat {work}; echo done >&2; exit 5"
            )
        )
        started.read_until(b"ready", timeout=COMMAND_TIMEOUT)
        sandbox.upload(b"line one\nline two\n", work)
        chunks: list[tuple[str, bytes]] = []
        assert started.follow(timeout=COMMAND_TIMEOUT, on_output=lambda s, b: chunks.append((s, b))) == 5
        assert [b for s, b in chunks if s == "stdout"] == [b"line one\n", b"line two\n"]
        assert [b for s, b in chunks if s == "stderr"] == [b"done\n"]

    def test_started_command_outlives_the_thread_that_started_it(self, sandbox: Sandbox) -> None:
        """A sandbox prepared ahead is started on a short-lived thread and followed from the task's: the
        command must not end with the thread that started it (e.g. a parent-death signal bound to it)."""
        work = f"{sandbox.workdir.rstrip('/')}/conformance-later"
        handed: list[Started] = []

        def prepare() -> None:
            started = sandbox.start(sh(f"echo ready; while [ ! -f {work} ]; do sleep 0.05; done; cat {work}"))
            started.read_until(b"ready", timeout=COMMAND_TIMEOUT)
            handed.append(started)

        thread = threading.Thread(target=prepare)
        thread.start()
        thread.join()
        assert handed, "the command was not ready"
        time.sleep(0.5)  # long enough for a command tied to the ended thread to be gone
        sandbox.upload(b"still here\n", work)
        run = CapturedRun()
        assert handed[0].follow(timeout=COMMAND_TIMEOUT, on_output=run) == 0
        assert run.lines("stdout") == [b"still here\n"]

    def test_started_command_that_ends_before_its_marker_says_why(self, sandbox: Sandbox) -> None:
        started = sandbox.start(sh("echo could not fetch the package >&2; exit 3"))
        with pytest.raises(SandboxError, match="exited 3 before it was ready: could not fetch the package"):
            started.read_until(b"ready", timeout=COMMAND_TIMEOUT)
        started.close()

    def test_newline_free_output_arrives_in_pieces_of_at_most_1_mib(self, sandbox: Sandbox) -> None:
        size = 2 * MAX_LINE_BYTES + 100
        pieces: list[int] = []
        code = sandbox.run(
            sh(f"head -c {size} /dev/zero | tr '\\000' x"),
            timeout=COMMAND_TIMEOUT,
            on_output=lambda stream, line: pieces.append(len(line)),
        )
        assert code == 0 and sum(pieces) == size
        assert max(pieces) == MAX_LINE_BYTES, f"pieces of {sorted(set(pieces))} bytes"

    def test_cwd_is_used(self, sandbox: Sandbox) -> None:
        run = run_captured(sandbox, ["pwd"], cwd=sandbox.workdir)
        assert run.code == 0 and run.output("stdout").decode().strip() == sandbox.workdir

    def test_large_output_is_streamed_without_growing_memory(self, sandbox: Sandbox) -> None:
        line = b"x" * 99 + b"\n"
        count = 50 * 1024 * 1024 // len(line)
        totals = {"bytes": 0, "lines": 0, "complete": 0, "stderr": 0}

        def count_output(stream: str, data: bytes) -> None:
            if stream != "stdout":
                totals["stderr"] += 1
                return
            totals["bytes"] += len(data)
            totals["lines"] += 1
            totals["complete"] += data == line

        reset_peak_rss()
        before = peak_rss_bytes()
        code = sandbox.run(
            sh(f"yes {line[:-1].decode()} | head -n {count}"), timeout=COMMAND_TIMEOUT, on_output=count_output
        )
        growth = peak_rss_bytes() - before
        assert code == 0
        assert totals == {"bytes": count * len(line), "lines": count, "complete": count, "stderr": 0}
        assert growth < 30 * 1024 * 1024, f"peak RSS grew by {growth / 2**20:.1f} MiB for 50 MiB of output"

    # -- files --------------------------------------------------------------------------------------

    def test_binary_upload_download_round_trip(self, sandbox: Sandbox) -> None:
        data = os.urandom(10 * 1024 * 1024 + 7)
        digest = hashlib.sha256(data).hexdigest()
        path = f"{sandbox.workdir}/conformance/nested/blob.bin"  # the contract promises paths under workdir
        sandbox.upload(data, path)
        inside = run_captured(sandbox, ["sha256sum", path])
        assert inside.code == 0
        assert inside.output("stdout").split()[0].decode() == digest, "the sandbox sees different bytes"
        assert hashlib.sha256(sandbox.download(path)).hexdigest() == digest

    def test_file_written_by_command_is_downloadable(self, sandbox: Sandbox) -> None:
        path = f"{sandbox.workdir}/made.bin"
        assert sandbox.run(sh(f"printf 'made inside\\n\\000\\377' > {path}"), timeout=COMMAND_TIMEOUT) == 0
        assert sandbox.download(path) == b"made inside\n\x00\xff"

    # -- environment --------------------------------------------------------------------------------

    def test_env_arrives_byte_exact(self, create_sandbox: Callable[..., Sandbox]) -> None:
        spec_env = {
            "MFS_SPACES": "  leading, inner  and trailing  ",
            "MFS_QUOTES": 'it\'s "quoted" `tick` $(not run) $HOME \\ back',
            "MFS_NEWLINES": "line one\nline two\n",
            "MFS_UNICODE": "grüße ✓ 日本語",
            "MFS_EMPTY": "",
            "MFS_OVERRIDDEN": "from spec",
        }
        run_env = {"MFS_RUN_ONLY": "run = 'value'\n\ttab", "MFS_OVERRIDDEN": "from run"}
        sandbox = create_sandbox(env=spec_env)
        run = run_captured(sandbox, ["env", "-0"], env=run_env)
        assert run.code == 0
        seen = parse_env0(run.output("stdout"))
        expected = {**spec_env, **run_env}
        assert {name: seen.get(name) for name in expected} == expected

    def test_host_environment_does_not_leak(
        self, create_sandbox: Callable[..., Sandbox], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        canary = f"leaked-{uuid.uuid4().hex}"
        monkeypatch.setenv("MFS_CANARY_SECRET", canary)
        sandbox = create_sandbox(env={"MFS_VISIBLE": "visible-marker"})
        run = run_captured(
            sandbox, sh('env; for f in /proc/[0-9]*/environ; do cat "$f"; echo; done 2>/dev/null; true')
        )
        output = run.output("stdout") + run.output("stderr")
        assert b"visible-marker" in output, "the sandbox's own environment was not readable"
        assert canary.encode() not in output
        assert b"MFS_CANARY_SECRET" not in output

    # -- arguments ----------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "bad",
        [
            {"argv": []},
            {"argv": "echo hi"},
            {"argv": ["echo", "nul\0byte"]},
            {"argv": ["true"], "cwd": "relative"},
            {"argv": ["true"], "timeout": 0},
            {"argv": ["true"], "env": {"A=B": "x"}},
            {"argv": ["true"], "env": {"A": "nul\0byte"}},
        ],
        ids=["empty-argv", "string-argv", "nul-argv", "relative-cwd", "zero-timeout", "env-name", "nul-env"],
    )
    def test_invalid_run_arguments_are_config_errors(self, sandbox: Sandbox, bad: dict[str, Any]) -> None:
        with pytest.raises(ConfigError):
            sandbox.run(**bad)
        assert sandbox.run(["true"], timeout=COMMAND_TIMEOUT) == 0, "the sandbox is not usable afterwards"

    def test_exception_in_on_output_stops_the_command_and_propagates(self, sandbox: Sandbox) -> None:
        class CallbackFailed(Exception):
            pass

        def explode(stream: str, line: bytes) -> None:
            raise CallbackFailed

        started = time.monotonic()
        with pytest.raises(CallbackFailed):
            sandbox.run(sh("echo hi; sleep 30"), timeout=COMMAND_TIMEOUT, on_output=explode)
        assert time.monotonic() - started < 15
        assert sandbox.run(["true"], timeout=COMMAND_TIMEOUT) == 0, "the sandbox is not usable afterwards"

    # -- lifetime -----------------------------------------------------------------------------------

    def test_timeout_fires_while_output_keeps_flowing(self, sandbox: Sandbox) -> None:
        lines: list[bytes] = []
        started = time.monotonic()
        with pytest.raises(SandboxTimeoutError, match="timeout"):
            sandbox.run(
                sh("while :; do echo tick; sleep 0.01; done"),
                timeout=1,
                on_output=lambda stream, line: lines.append(line),
            )
        assert time.monotonic() - started < 6 and len(lines) > 5

    def test_lifetime_bounds_every_command(self, create_sandbox: Callable[..., Sandbox]) -> None:
        sandbox = create_sandbox(timeout=2)
        started = time.monotonic()
        with pytest.raises(SandboxTimeoutError, match="lifetime"):
            sandbox.run(sh("sleep 30"), timeout=COMMAND_TIMEOUT)
        assert time.monotonic() - started < 7
        with pytest.raises(SandboxTimeoutError, match="not started"):
            sandbox.run(["true"])

    def test_timeout_raises_sandbox_timeout_error(self, sandbox: Sandbox) -> None:
        started = time.monotonic()
        with pytest.raises(SandboxTimeoutError):
            sandbox.run(sh("echo going; sleep 30"), timeout=1)
        assert time.monotonic() - started < 6, "the timed-out command was not stopped promptly"

    def test_destroy_kills_running_command(self, sandbox: Sandbox) -> None:
        started = threading.Event()
        outcome: list[object] = []

        def run_long_command() -> None:
            try:
                outcome.append(
                    sandbox.run(
                        sh("echo started; sleep 60"),
                        timeout=COMMAND_TIMEOUT + 30,
                        on_output=lambda stream, line: started.set(),
                    )
                )
            except BaseException as error:  # a backend may report the destroyed command as a SandboxError
                outcome.append(error)

        runner = threading.Thread(target=run_long_command, daemon=True)
        runner.start()
        assert started.wait(COMMAND_TIMEOUT), "the command never printed its first line"
        destroyed_at = time.monotonic()
        sandbox.destroy()
        runner.join(5)
        assert not runner.is_alive(), "run() was still blocked 5 s after destroy()"
        assert time.monotonic() - destroyed_at < 5
        assert outcome and isinstance(outcome[0], (int, SandboxError)), f"run() ended with {outcome!r}"
        sandbox.destroy()  # idempotent

    def test_destroy_from_on_output_returns_137(self, sandbox: Sandbox) -> None:
        code = sandbox.run(
            sh("echo go; sleep 30"), timeout=COMMAND_TIMEOUT, on_output=lambda stream, line: sandbox.destroy()
        )
        assert code == KILLED

    def test_destroy_ends_concurrent_commands(self, sandbox: Sandbox) -> None:
        started = threading.Semaphore(0)
        outcomes: list[object] = []

        def run_long_command() -> None:
            try:
                outcomes.append(
                    sandbox.run(
                        sh("echo started; sleep 60"),
                        timeout=COMMAND_TIMEOUT + 30,
                        on_output=lambda stream, line: started.release(),
                    )
                )
            except BaseException as error:
                outcomes.append(error)

        runners = [threading.Thread(target=run_long_command, daemon=True) for _ in range(3)]
        for runner in runners:
            runner.start()
        for _ in runners:
            assert started.acquire(timeout=COMMAND_TIMEOUT), "a command never printed its first line"
        sandbox.destroy()
        for runner in runners:
            runner.join(5)
        assert not any(runner.is_alive() for runner in runners), "run() was still blocked 5 s after destroy()"
        assert len(outcomes) == 3 and all(isinstance(o, (int, SandboxError)) for o in outcomes), outcomes
        assert all(o == KILLED for o in outcomes if isinstance(o, int)), outcomes

    def test_destroyed_sandbox_refuses_work(self, sandbox: Sandbox) -> None:
        path = f"{sandbox.workdir}/kept.txt"
        sandbox.upload(b"x", path)
        sandbox.destroy()
        with pytest.raises(SandboxError, match="destroyed"):
            sandbox.run(["true"], timeout=COMMAND_TIMEOUT)
        with pytest.raises(SandboxError, match="destroyed"):
            sandbox.upload(b"x", path)
        with pytest.raises(SandboxError, match="destroyed"):
            sandbox.download(path)

    def test_destroy_is_idempotent(self, backend: Backend, sandbox: Sandbox) -> None:
        sandbox.destroy()
        sandbox.destroy()
        backend.destroy(sandbox.id)

    def test_processes_end_with_their_command_where_the_backend_says_so(
        self, backend: Backend, sandbox: Sandbox
    ) -> None:
        """`Capabilities.processes_end_with_command`: what a command left in the background stops with it."""
        if not backend.capabilities.processes_end_with_command:
            pytest.skip(
                f"{backend.name} does not claim processes_end_with_command (background processes run on)"
            )
        path = f"{sandbox.workdir}/ticks"
        # The command returns once the background writer has written (an event, not a delay).
        script = f"(while true; do echo tick >> {path}; sleep 0.02; done) & until [ -s {path} ]; do sleep 0.01; done"
        assert sandbox.run(sh(script), timeout=COMMAND_TIMEOUT) == 0
        ticks = sandbox.download(path)
        assert ticks, "the background process never ran"
        time.sleep(0.5)
        assert sandbox.download(path) == ticks, "a background process kept running after its command returned"

    # -- the backend --------------------------------------------------------------------------------

    def test_create_goes_through_the_create_limiter(
        self, backend: Backend, make_spec: Callable[..., SandboxSpec], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`Backend.create` waits for the limiter built from the declared limits (a backend implements
        `_create`; if it overrides `create`, it must still call the base class)."""
        assert isinstance(backend.capabilities, Capabilities)
        held: list[float] = []
        limiter = backend.create_limiter()

        class Spy(CreateLimiter):
            @contextlib.contextmanager
            def hold(self) -> Iterator[float]:
                with limiter.hold() as waited:
                    held.append(waited)
                    yield waited

        monkeypatch.setattr(backend, "create_limiter", lambda: Spy(limiter.state_dir))
        backend.create(make_spec()).destroy()
        assert len(held) == 1

    def test_findable_by_label(self, backend: Backend, create_sandbox: Callable[..., Sandbox]) -> None:
        value = uuid.uuid4().hex
        sandbox = create_sandbox(labels={"conformance": value})
        assert sandbox.id in {info.id for info in backend.list({"conformance": value})}
        assert sandbox.id not in {info.id for info in backend.list({"conformance": value + "-other"})}
        sandbox.destroy()
        assert sandbox.id not in {info.id for info in backend.list({"conformance": value})}

    def test_context_manager_destroys_on_exception(
        self, backend: Backend, make_spec: Callable[..., SandboxSpec]
    ) -> None:
        value = uuid.uuid4().hex

        class Boom(Exception):
            pass

        sandbox_id = None
        with pytest.raises(Boom), backend.create(make_spec(labels={"conformance": value})) as sandbox:
            sandbox_id = sandbox.id
            assert sandbox.id in {info.id for info in backend.list({"conformance": value})}
            raise Boom
        assert sandbox_id is not None
        assert sandbox_id not in {info.id for info in backend.list({"conformance": value})}

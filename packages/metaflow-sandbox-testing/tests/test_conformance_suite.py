"""The conformance suite itself: it demands a backend, and it catches broken ones (run with pytester)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

BROKEN_BACKENDS = '''
import os
import pytest
from metaflow_sandbox_bubblewrap import BubblewrapBackend
from metaflow_sandbox_testing.conformance import BackendConformance


class LeakyBackend(BubblewrapBackend):
    """Passes the launcher's environment into every command."""

    def create(self, spec):
        sandbox = super().create(spec)
        run = sandbox.run
        sandbox.run = lambda argv, env=None, **kw: run(argv, env={**os.environ, **(env or {})}, **kw)
        return sandbox


class BufferingBackend(BubblewrapBackend):
    """Delivers all output only when the command has ended."""

    def create(self, spec):
        sandbox = super().create(spec)
        run = sandbox.run

        def buffered_run(argv, on_output=None, **kw):
            held = []
            code = run(argv, on_output=lambda stream, line: held.append((stream, line)), **kw)
            for stream, line in held:
                on_output(stream, line)
            return code

        sandbox.run = buffered_run
        return sandbox


class TestLeaky(BackendConformance):
    @pytest.fixture
    def backend(self, tmp_path):
        return LeakyBackend(state_dir=str(tmp_path))


class TestBuffering(BackendConformance):
    @pytest.fixture
    def backend(self, tmp_path):
        return BufferingBackend(state_dir=str(tmp_path))
'''


def bubblewrap_unusable() -> str | None:
    try:
        from metaflow_sandbox_bubblewrap import BubblewrapBackend
    except ImportError:
        return "metaflow-sandbox-bubblewrap is not installed"
    try:
        BubblewrapBackend().check()
    except Exception as error:
        return str(error)
    return None


def test_backend_fixture_must_be_overridden(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "from metaflow_sandbox_testing.conformance import BackendConformance\n"
        "class TestNothing(BackendConformance):\n"
        "    pass\n"
    )
    result = pytester.runpytest("-k", "test_exit_code")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*Override the `backend` fixture*"])


def test_suite_catches_leaks_and_buffering(pytester: pytest.Pytester) -> None:
    reason = bubblewrap_unusable()
    if reason is not None:
        pytest.skip(f"needs a working bubblewrap backend to break: {reason}")
    pytester.makepyfile(BROKEN_BACKENDS)
    selection = (
        "(TestLeaky and (host_environment or env_arrives))"
        " or (TestBuffering and (first_line or large_output or stdout_and_stderr))"
    )
    result = pytester.runpytest("-k", selection, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED *TestLeaky::test_host_environment_does_not_leak*",
            "FAILED *TestBuffering::test_first_line_arrives_while_command_runs*",
            "FAILED *TestBuffering::test_large_output_is_streamed_without_growing_memory*",
        ]
    )

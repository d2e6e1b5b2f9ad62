"""The command line every emulator shares: the URL on the first line, and a clean stop on SIGTERM at once."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys

import pytest

pytest.importorskip("aiohttp", reason='needs metaflow-sandbox-testing[daytona] (pip install ".[daytona]")')

EMULATORS = {
    "daytona_emulator": ("Daytona emulator listening on http://127.0.0.1:", "/api"),
    "e2b_emulator": ("E2B emulator listening on http://127.0.0.1:", ""),
    "boxlite_emulator": ("boxlite emulator listening on http://127.0.0.1:", ""),
}


def _needs(module: str) -> pytest.MarkDecorator:
    """The E2B emulator speaks envd's protobuf messages, which come with the e2b SDK."""
    missing = module == "e2b_emulator" and importlib.util.find_spec("e2b") is None
    return pytest.mark.skipif(missing, reason='the E2B emulator needs the e2b SDK (pip install ".[e2b]")')


@pytest.mark.parametrize("module", [pytest.param(m, marks=_needs(m)) for m in sorted(EMULATORS)])
def test_prints_its_url_and_stops_on_a_sigterm_sent_as_soon_as_the_url_is_read(module: str) -> None:
    prefix, suffix = EMULATORS[module]
    process = subprocess.Popen(
        [sys.executable, "-m", f"metaflow_sandbox_testing.{module}", "--port", "0", "--api-key", "k"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
    finally:
        process.send_signal(
            signal.SIGTERM
        )  # no pause: the handler must be in place before the URL is printed
        code = process.wait(timeout=15)
        process.stdout.close()
    assert line.startswith(prefix) and line.strip().endswith(suffix), line
    assert code == 0

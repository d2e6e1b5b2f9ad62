"""The shared conformance suite, against the Daytona emulator through the real SDK."""

from __future__ import annotations

import hashlib
import os

import pytest

from metaflow_sandbox_core import Backend, Sandbox
from metaflow_sandbox_daytona import DaytonaBackend
from metaflow_sandbox_testing.conformance import COMMAND_TIMEOUT, BackendConformance, run_captured, sh


class TestDaytonaConformance(BackendConformance):
    @pytest.fixture
    def backend(self, backend: DaytonaBackend) -> Backend:
        return backend

    @pytest.fixture
    def spec_defaults(self) -> dict[str, object]:
        return {"network": "full"}

    # The suite's two file tests use /tmp, but the contract only promises paths under `workdir` (the
    # emulator, like a sandbox's home, refuses paths outside it). Same checks, under `workdir`:

    def test_binary_upload_download_round_trip(self, sandbox: Sandbox) -> None:
        data = os.urandom(10 * 1024 * 1024 + 7)
        digest = hashlib.sha256(data).hexdigest()
        path = f"{sandbox.workdir}/conformance/nested/blob.bin"
        sandbox.upload(data, path)
        inside = run_captured(sandbox, ["sha256sum", path])
        assert inside.code == 0
        assert inside.output("stdout").split()[0].decode() == digest, "the sandbox sees different bytes"
        assert hashlib.sha256(sandbox.download(path)).hexdigest() == digest

    def test_file_written_by_command_is_downloadable(self, sandbox: Sandbox) -> None:
        path = f"{sandbox.workdir}/made.bin"
        assert sandbox.run(sh(f"printf 'made inside\\n\\000\\377' > {path}"), timeout=COMMAND_TIMEOUT) == 0
        assert sandbox.download(path) == b"made inside\n\x00\xff"

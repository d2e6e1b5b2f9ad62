"""The shared conformance suite: the remote runtime against the emulator through the real SDK, and the local
runtime wherever a VM boots (skipped with the boot probe's reason elsewhere)."""

from __future__ import annotations

import pytest

from metaflow_sandbox_boxlite import BoxliteBackend
from metaflow_sandbox_core import Backend, Sandbox
from metaflow_sandbox_testing.conformance import BackendConformance

#: boxlite 0.10.8's REST client reads each execution's output into a buffer of its own as fast as the server
#: sends it, whether or not anyone reads the stream (shown deterministically by
#: tests/test_remote.py::test_sdk_buffers_unread_output). So the process's memory under 50 MiB of output depends
#: on how fast the server sends compared with how fast the caller forwards: it stays under the suite's bound
#: in some runs and not in others. Not strict for that reason; the cause is measured by the test above.
SDK_BUFFERS = pytest.mark.xfail(
    strict=False,
    reason="boxlite 0.10.8's REST client buffers unread output without bound (test_sdk_buffers_unread_output); "
    "peak memory then depends on the server's speed",
)


class TestBoxliteRemoteConformance(BackendConformance):
    @pytest.fixture
    def backend(self, backend: BoxliteBackend) -> Backend:
        return backend

    @pytest.fixture
    def spec_defaults(self) -> dict[str, object]:
        return {"network": "full"}

    @SDK_BUFFERS
    def test_large_output_is_streamed_without_growing_memory(self, sandbox: Sandbox) -> None:
        super().test_large_output_is_streamed_without_growing_memory(sandbox)


class TestBoxliteLocalConformance(BackendConformance):
    @pytest.fixture
    def backend(self, local_backend: BoxliteBackend) -> Backend:
        return local_backend

    @pytest.fixture
    def spec_defaults(self) -> dict[str, object]:
        return {"network": "full"}

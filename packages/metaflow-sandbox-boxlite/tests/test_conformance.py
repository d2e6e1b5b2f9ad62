"""The shared conformance suite: the remote runtime against the emulator through the real SDK, and the local
runtime wherever a VM boots (skipped with the boot probe's reason elsewhere)."""

from __future__ import annotations

import pytest

from metaflow_sandbox_boxlite import BoxliteBackend
from metaflow_sandbox_core import Backend
from metaflow_sandbox_testing.conformance import BackendConformance

#: Measured (tests/test_remote.py::test_sdk_buffers_unread_output): boxlite 0.10.8's REST client reads the
#: attach WebSocket into a buffer of its own as fast as the server sends, whether or not the stream is read,
#: so no backend can hold its memory flat. strict: this fails loudly once an SDK release applies backpressure.
SDK_BUFFERS = pytest.mark.xfail(
    strict=True,
    reason="boxlite 0.10.8's REST client buffers all unread output (not bounded by the backend's reading)",
)


class TestBoxliteRemoteConformance(BackendConformance):
    @pytest.fixture
    def backend(self, backend: BoxliteBackend) -> Backend:
        return backend

    @pytest.fixture
    def spec_defaults(self) -> dict[str, object]:
        return {"network": "full"}

    @SDK_BUFFERS
    def test_large_output_is_streamed_without_growing_memory(self, sandbox: object) -> None:
        super().test_large_output_is_streamed_without_growing_memory(sandbox)  # type: ignore[arg-type]


class TestBoxliteLocalConformance(BackendConformance):
    @pytest.fixture
    def backend(self, local_backend: BoxliteBackend) -> Backend:
        return local_backend

    @pytest.fixture
    def spec_defaults(self) -> dict[str, object]:
        return {"network": "full"}

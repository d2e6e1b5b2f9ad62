"""The shared conformance suite, against the E2B emulator through the real SDK."""

from __future__ import annotations

import pytest

from metaflow_sandbox_core import Backend
from metaflow_sandbox_e2b import E2BBackend
from metaflow_sandbox_testing.conformance import BackendConformance


class TestE2BConformance(BackendConformance):
    @pytest.fixture
    def backend(self, backend: E2BBackend) -> Backend:
        return backend

    @pytest.fixture
    def spec_defaults(self) -> dict[str, object]:
        return {"network": "full"}

"""The shared conformance suite, against the Daytona emulator through the real SDK."""

from __future__ import annotations

import pytest

from metaflow_sandbox_core import Backend
from metaflow_sandbox_daytona import DaytonaBackend
from metaflow_sandbox_testing.conformance import BackendConformance


class TestDaytonaConformance(BackendConformance):
    @pytest.fixture
    def backend(self, backend: DaytonaBackend) -> Backend:
        return backend

    @pytest.fixture
    def spec_defaults(self) -> dict[str, object]:
        return {"network": "full"}

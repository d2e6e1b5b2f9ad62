"""The shared backend conformance suite, against real bwrap."""

from __future__ import annotations

import pytest

from metaflow_sandbox_bubblewrap import BubblewrapBackend
from metaflow_sandbox_core import Backend
from metaflow_sandbox_testing.conformance import BackendConformance


class TestBubblewrapConformance(BackendConformance):
    @pytest.fixture
    def backend(self, bubblewrap_backend: BubblewrapBackend) -> Backend:
        return bubblewrap_backend

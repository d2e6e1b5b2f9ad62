"""Test kit for metaflow-sandbox backends; the conformance suite is in `metaflow_sandbox_testing.conformance`."""

import pytest

# Detailed assertion messages for the suite's plain `assert`s (must run before the module is imported).
pytest.register_assert_rewrite("metaflow_sandbox_testing.conformance")

__version__ = "0.1.0"

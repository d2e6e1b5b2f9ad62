"""Where a backend keeps per-machine state (sandbox records, throttles)."""

from __future__ import annotations

import os
import tempfile


def default_state_dir(backend: str, env_var: str) -> str:
    """`$<env_var>`, else `$XDG_RUNTIME_DIR/metaflow-sandbox/<backend>`, else `/tmp/metaflow-sandbox-<uid>/<backend>`."""
    configured = os.environ.get(env_var)
    if configured:
        return os.path.abspath(configured)
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return os.path.join(runtime_dir, "metaflow-sandbox", backend)
    return os.path.join(tempfile.gettempdir(), f"metaflow-sandbox-{os.getuid()}", backend)

"""A local, wire-faithful emulator of E2B's control plane and envd, for tests that drive the REAL `e2b` SDK.

    from metaflow_sandbox_testing.e2b_emulator import E2BEmulator

    with E2BEmulator() as e2b:
        os.environ.update(e2b.env())   # E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL
        ...

Modules: `handle` (the child-process handle, stdlib only), `faults` (knobs), `app` (server and admin routes),
`control` (the REST API), `envd` (Connect RPC `process.Process`, `/files`, `/health`), `sandboxes` (records,
lifetimes, processes), `fixtures` (pytest). The server needs `pip install "metaflow-sandbox-testing[e2b]"`
(aiohttp, and the e2b SDK whose generated protobuf messages encode envd's events).
"""

from .faults import Faults
from .handle import DEFAULT_API_KEY, E2BEmulator

__all__ = ["DEFAULT_API_KEY", "E2BEmulator", "Faults"]

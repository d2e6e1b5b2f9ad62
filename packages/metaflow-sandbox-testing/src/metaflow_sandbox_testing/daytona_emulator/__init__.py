"""A local, wire-faithful emulator of Daytona's API and toolbox, for tests that drive the REAL `daytona` SDK.

    from metaflow_sandbox_testing.daytona_emulator import DaytonaEmulator

    with DaytonaEmulator() as daytona:
        os.environ.update(daytona.env())   # DAYTONA_API_URL=http://127.0.0.1:<port>/api, DAYTONA_API_KEY
        ...

Sandboxes are private host directories; commands are local processes in a clean environment, in an empty
network namespace behind a filtering proxy when the create request sets a network policy. Modules:
`handle` (the child-process handle, stdlib only), `faults` (fault knobs), `app` (server), `api` (control
plane), `toolbox` (sessions, commands, log WebSocket), `files` (bulk upload/download), `commands`
(processes and logs), `sandboxes` (records and state), `admin` (`/_emulator/...`), `fixtures` (pytest).
The server needs `pip install "metaflow-sandbox-testing[daytona]"` (aiohttp).
"""

from .faults import Faults
from .handle import DEFAULT_API_KEY, DaytonaEmulator

__all__ = ["DEFAULT_API_KEY", "DaytonaEmulator", "Faults"]

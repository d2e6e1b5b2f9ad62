"""A local emulator of boxlite's REST API (`openapi/box.openapi.yaml`), for tests that drive the REAL `boxlite`
SDK in REST mode (`Boxlite.rest(...)`).

    from metaflow_sandbox_testing.boxlite_emulator import BoxliteEmulator

    with BoxliteEmulator() as boxlite:
        os.environ.update(boxlite.env())   # BOXLITE_REST_URL, BOXLITE_API_KEY (, BOXLITE_REST_PATH_PREFIX)
        ...

Each box is a private host directory; its commands are local processes in a clean environment (the box's
env, a PATH to the image's Python, HOME inside the box's directory), in an empty network namespace behind a
filtering proxy when outbound networking is disabled or limited to `allow_net`. Modules: `faults` (fault knobs),
`boxes` (boxes, executions, tar transfers), `app` (the aiohttp server: routes, auth, errors, attach
WebSocket, admin), `handle` (the child-process handle, standard library only), `fixtures` (pytest).
The server needs `pip install "metaflow-sandbox-testing[boxlite]"` (aiohttp).
"""

from .faults import Faults
from .handle import DEFAULT_API_KEY, BoxliteEmulator

__all__ = ["DEFAULT_API_KEY", "BoxliteEmulator", "Faults"]

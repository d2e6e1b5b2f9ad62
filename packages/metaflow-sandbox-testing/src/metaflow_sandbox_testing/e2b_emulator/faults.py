"""Fault-injection knobs of the E2B emulator (the shared ones and their checks: `fault_knobs`).

Lifetime expiry is E2B's own clock: a sandbox dies at its `endAt`, and `refuse_timeout_updates` keeps a client
from pushing it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..fault_knobs import FaultKnobs


@dataclass
class Faults(FaultKnobs):
    """`fail_creates` counts `POST /v2/sandboxes` requests; and:"""

    #: The next N creates are held (no answer) until the test releases them (`release_creates`): a slow create.
    hold_creates: int = 0
    #: Every `process.Process/Start` stream opened from now on ends abruptly (no end event, no end of stream)
    #: after this many lines, while the command runs on. None: off.
    drop_stream_after_lines: int | None = None
    #: The next N `POST /sandboxes/{id}/timeout` fail with 500: the sandbox keeps its old `endAt`.
    refuse_timeout_updates: int = 0
    #: A sandbox whose command prints this text refuses every later timeout update (500), so it ends at its
    #: current `endAt`: a lifetime that runs out mid-step, on E2B's own clock. None: off.
    freeze_lifetime_marker: str | None = None

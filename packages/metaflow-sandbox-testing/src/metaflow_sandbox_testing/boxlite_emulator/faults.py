"""Fault-injection knobs of the boxlite emulator (the shared ones and their checks: `fault_knobs`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..fault_knobs import FaultKnobs


@dataclass
class Faults(FaultKnobs):
    """`fail_creates` counts `POST /boxes` requests; `kill_on_marker` removes the box; and:"""

    #: The next N `/files` requests (upload or download) fail with HTTP 503.
    fail_files: int = 0
    #: Every attach WebSocket opened from now on is closed abnormally (1011) after this many output frames,
    #: while the command keeps running. None: off.
    drop_attach_after_frames: int | None = None

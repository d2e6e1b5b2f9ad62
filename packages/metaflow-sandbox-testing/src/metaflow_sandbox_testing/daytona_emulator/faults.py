"""Fault-injection knobs of the Daytona emulator (the shared ones and their checks: `fault_knobs`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..fault_knobs import FaultKnobs, cut_after_lines, find_marker

__all__ = ["BROKEN_STATES", "Faults", "cut_after_lines", "find_marker"]

#: States a broken create can end in (both make the SDK's `create()` raise).
BROKEN_STATES = ("error", "build_failed")


@dataclass
class Faults(FaultKnobs):
    """`fail_creates` counts `POST /api/sandbox` requests; and:"""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"broken_state": BROKEN_STATES}
    REMOVED: ClassVar[dict[str, str]] = {
        "kill_after": "kill_on_marker with kill_marker (the sandbox dies when its command prints the marker)",
        "create_delay": "create_polls (new sandboxes stay creating for that many state reads)",
        "drop_logs_after": "drop_logs_after_lines (the stream is cut after that many lines)",
    }

    #: New sandboxes answer `creating` / `pending_build` to this many reads of their state
    #: (`GET /api/sandbox/{id}`, what the SDK polls) before `started` (or broken).
    create_polls: int = 0
    #: The next N new sandboxes end in `broken_state` instead of `started`.
    broken_creates: int = 0
    #: `error` or `build_failed`.
    broken_state: str = "build_failed"
    #: Every follow-logs WebSocket opened from now on is closed abnormally (code 1011) right after it has
    #: delivered this many lines (stdout and stderr together), while the command keeps running. None: off.
    drop_logs_after_lines: int | None = None

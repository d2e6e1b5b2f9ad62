"""Fault-injection knobs of the Daytona emulator (standard library only: the handle uses them too).

Every knob can be set when the emulator starts (`--faults JSON`, `DaytonaEmulator(faults=...)`) and changed
while it runs (`POST /_emulator/faults`, `DaytonaEmulator.faults(...)`); unset knobs keep their value.

Every fault fires on an event the test controls — the Nth request, the Nth state read, a line a command
prints, the Nth line of a log stream — never after a delay: a slow machine sees the same faults as a fast one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

#: States a broken create can end in (both make the SDK's `create()` raise).
BROKEN_STATES = ("error", "build_failed")

#: Knobs that existed once, and what replaces them (timed faults hit whatever ran at that moment).
REMOVED = {
    "kill_after": "kill_on_marker with kill_marker (the sandbox dies when its command prints the marker)",
    "create_delay": "create_polls (new sandboxes stay creating for that many state reads)",
    "drop_logs_after": "drop_logs_after_lines (the stream is cut after that many lines)",
}


@dataclass
class Faults:
    #: The next N `POST /api/sandbox` requests fail with HTTP `fail_status` (nothing is created).
    fail_creates: int = 0
    #: Status of those failures (e.g. 503, 429, 500).
    fail_status: int = 503
    #: Seconds sent as `Retry-After` with those failures (None: no header).
    retry_after: float | None = None
    #: New sandboxes answer `creating` / `pending_build` to this many reads of their state
    #: (`GET /api/sandbox/{id}`, what the SDK polls) before `started` (or broken).
    create_polls: int = 0
    #: The next N new sandboxes end in `broken_state` instead of `started`.
    broken_creates: int = 0
    #: `error` or `build_failed`.
    broken_state: str = "build_failed"
    #: The next N sandboxes whose command prints `kill_marker` (stdout or stderr) die right then: the output
    #: holding the marker is logged, every process of the sandbox is SIGKILLed (exit code 137) and the
    #: sandbox is deleted (404 from then on). Each kill counts one down; other sandboxes are not touched.
    kill_on_marker: int = 0
    #: The text that triggers `kill_on_marker` (required while it is above 0).
    kill_marker: str | None = None
    #: Every follow-logs WebSocket opened from now on is closed abnormally (code 1011) right after it has
    #: delivered this many lines (stdout and stderr together), while the command keeps running. None: off.
    drop_logs_after_lines: int | None = None

    def update(self, changes: Mapping[str, Any]) -> Faults:
        """Apply `changes` (knob → value; `"reset": true` first restores the defaults). `ValueError` if invalid
        (then nothing changes)."""
        changes = dict(changes)
        start = Faults() if changes.pop("reset", False) else self
        candidate = Faults(**{**asdict(start), **_checked(changes)})
        if candidate.kill_on_marker > 0 and not candidate.kill_marker:
            raise ValueError(
                "kill_on_marker needs kill_marker: the text whose appearance in a command's output kills "
                "its sandbox"
            )
        for knob in fields(self):
            setattr(self, knob.name, getattr(candidate, knob.name))
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _checked(changes: Mapping[str, Any]) -> dict[str, Any]:
    known = {knob.name for knob in fields(Faults)}
    for name in sorted(set(changes) & set(REMOVED)):
        raise ValueError(f"fault knob {name!r} was removed (faults are event-based); use {REMOVED[name]}")
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown fault knob(s) {unknown}; known: {sorted(known)}")
    checked: dict[str, Any] = {}
    for name, value in changes.items():
        if name in ("fail_creates", "broken_creates", "fail_status", "create_polls", "kill_on_marker"):
            checked[name] = _number(name, value, int, minimum=0)
        elif name == "drop_logs_after_lines":
            checked[name] = None if value is None else _number(name, value, int, minimum=0)
        elif name == "retry_after":
            checked[name] = None if value is None else _number(name, value, float, minimum=0)
        elif name == "kill_marker":
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"kill_marker={value!r} must be a non-empty string (or None)")
            checked[name] = value
        elif name == "broken_state":
            if value not in BROKEN_STATES:
                raise ValueError(f"broken_state={value!r}: use one of {list(BROKEN_STATES)}")
            checked[name] = value
    status = checked.get("fail_status")
    if status is not None and not 400 <= status <= 599:
        raise ValueError(f"fail_status={status}: use an HTTP error status (400-599)")
    return checked


def _number(name: str, value: Any, kind: type, minimum: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
    if kind is int and value != int(value):
        raise ValueError(f"{name}={value!r} must be a whole number")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return kind(value)


def find_marker(tail: bytes, data: bytes, marker: bytes) -> tuple[bool, bytes]:
    """Whether `marker` appears in a stream whose last bytes were `tail` and which now got `data` (a marker
    split across two reads counts), and the tail to keep for the next call."""
    window = tail + data
    if marker in window:
        return True, b""
    keep = len(marker) - 1
    return False, window[-keep:] if keep else b""


def cut_after_lines(data: bytes, lines: int) -> bytes:
    """`data` up to and including its `lines`-th newline (all of it when it has fewer)."""
    end = -1
    for _ in range(lines):
        end = data.find(b"\n", end + 1)
        if end < 0:
            return data
    return data[: end + 1]

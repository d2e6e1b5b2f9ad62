"""Fault-injection knobs of the Daytona emulator (standard library only: the handle uses them too).

Every knob can be set when the emulator starts (`--faults JSON`, `DaytonaEmulator(faults=...)`) and changed
while it runs (`POST /_emulator/faults`, `DaytonaEmulator.faults(...)`); unset knobs keep their value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

#: States a broken create can end in (both make the SDK's `create()` raise).
BROKEN_STATES = ("error", "build_failed")


@dataclass
class Faults:
    #: The next N `POST /api/sandbox` requests fail with HTTP `fail_status` (nothing is created).
    fail_creates: int = 0
    #: Status of those failures (e.g. 503, 429, 500).
    fail_status: int = 503
    #: Seconds sent as `Retry-After` with those failures (None: no header).
    retry_after: float | None = None
    #: New sandboxes stay in `creating` / `pending_build` this many seconds before `started` (or broken).
    create_delay: float = 0.0
    #: The next N new sandboxes end in `broken_state` instead of `started`.
    broken_creates: int = 0
    #: `error` or `build_failed`.
    broken_state: str = "build_failed"
    #: Every command started from now on gets its sandbox killed this many seconds later: its processes are
    #: SIGKILLed (exit code 137) and the sandbox is deleted. None: off.
    kill_after: float | None = None
    #: Every follow-logs WebSocket opened from now on is closed abnormally (code 1011) after this many frames
    #: while the command keeps running. None: off.
    drop_logs_after: int | None = None

    def update(self, changes: Mapping[str, Any]) -> Faults:
        """Apply `changes` (knob → value; `"reset": true` first restores the defaults). `ValueError` if invalid."""
        changes = dict(changes)
        if changes.pop("reset", False):
            for knob in fields(self):
                setattr(self, knob.name, knob.default)
        candidate = Faults(**{**asdict(self), **_checked(changes)})
        for knob in fields(self):
            setattr(self, knob.name, getattr(candidate, knob.name))
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _checked(changes: Mapping[str, Any]) -> dict[str, Any]:
    known = {knob.name for knob in fields(Faults)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown fault knob(s) {unknown}; known: {sorted(known)}")
    checked: dict[str, Any] = {}
    for name, value in changes.items():
        if name in ("fail_creates", "broken_creates", "fail_status"):
            checked[name] = _number(name, value, int, minimum=0)
        elif name == "drop_logs_after":
            checked[name] = None if value is None else _number(name, value, int, minimum=0)
        elif name in ("retry_after", "kill_after"):
            checked[name] = None if value is None else _number(name, value, float, minimum=0)
        elif name == "create_delay":
            checked[name] = _number(name, value, float, minimum=0)
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

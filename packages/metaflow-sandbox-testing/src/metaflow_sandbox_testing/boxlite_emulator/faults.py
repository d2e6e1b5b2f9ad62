"""Fault knobs of the boxlite emulator (standard library only). Set them at start (`--faults JSON`) or while
it runs (`POST /_emulator/faults`); unset knobs keep their value. Every fault fires on an event the test
controls (the Nth request, a line a command prints, the Nth frame of a stream), never after a delay."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class Faults:
    #: The next N `POST /boxes` fail with HTTP `fail_status` (nothing is created).
    fail_creates: int = 0
    #: Status of those failures (503, 429, 500, ...).
    fail_status: int = 503
    #: Seconds sent as `Retry-After` with those failures (None: no header).
    retry_after: float | None = None
    #: The next N `/files` requests (upload or download) fail with HTTP 503.
    fail_files: int = 0
    #: The next N boxes whose command prints `kill_marker` die right then: every process of the box is
    #: SIGKILLed (its executions exit 137) and the box is removed (404 from then on).
    kill_on_marker: int = 0
    kill_marker: str | None = None
    #: Every attach WebSocket opened from now on is closed abnormally (1011) after this many output frames,
    #: while the command keeps running. None: off.
    drop_attach_after_frames: int | None = None

    def update(self, changes: Mapping[str, Any]) -> Faults:
        """Apply `changes` (`"reset": true` first restores the defaults); `ValueError` if invalid."""
        changes = dict(changes)
        start = Faults() if changes.pop("reset", False) else self
        known = {knob.name for knob in fields(Faults)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault knob(s) {unknown}; known: {sorted(known)}")
        for name, value in changes.items():
            if name == "kill_marker":
                if value is not None and (not isinstance(value, str) or not value):
                    raise ValueError("kill_marker must be a non-empty string (or null)")
            elif (value is not None or name not in ("retry_after", "drop_attach_after_frames")) and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            ):
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        candidate = Faults(**{**asdict(start), **changes})
        if candidate.kill_on_marker and not candidate.kill_marker:
            raise ValueError("kill_on_marker needs kill_marker (the text that kills its box)")
        if not 400 <= candidate.fail_status <= 599:
            raise ValueError(f"fail_status={candidate.fail_status}: use an HTTP error status (400-599)")
        for knob in fields(self):
            setattr(self, knob.name, getattr(candidate, knob.name))
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

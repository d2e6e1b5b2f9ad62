"""Fault-injection knobs of the E2B emulator (standard library only: the handle uses them too).

Set when the emulator starts (`--faults JSON`, `E2BEmulator(faults=...)`) or while it runs
(`POST /_emulator/faults`, `E2BEmulator.faults(...)`); unset knobs keep their value. Every fault fires on an
event the test controls (the Nth request, a line a command prints, the Nth line of a stream, the test's own
release), never after a delay. Lifetime expiry is E2B's own clock: a sandbox dies at its `endAt`, and
`refuse_timeout_updates` keeps a client from pushing it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class Faults:
    #: The next N `POST /v2/sandboxes` fail with HTTP `fail_status` (nothing is created).
    fail_creates: int = 0
    #: Status of those failures (503, 429, 500, ...).
    fail_status: int = 503
    #: Seconds sent as `Retry-After` with those failures (None: no header).
    retry_after: float | None = None
    #: The next N creates are held (no answer) until the test releases them (`release_creates`): a slow create.
    hold_creates: int = 0
    #: The next N sandboxes whose command prints `kill_marker` die right then (SIGKILL, gone: 404/502 after).
    kill_on_marker: int = 0
    kill_marker: str | None = None
    #: Every `process.Process/Start` stream opened from now on ends abruptly (no end event, no end of stream)
    #: after this many lines, while the command runs on. None: off.
    drop_stream_after_lines: int | None = None
    #: The next N `POST /sandboxes/{id}/timeout` fail with 500: the sandbox keeps its old `endAt`.
    refuse_timeout_updates: int = 0
    #: A sandbox whose command prints this text refuses every later timeout update (500), so it ends at its
    #: current `endAt`: a lifetime that runs out mid-step, on E2B's own clock. None: off.
    freeze_lifetime_marker: str | None = None

    def update(self, changes: Mapping[str, Any]) -> Faults:
        """Apply `changes` (`"reset": true` first restores the defaults); `ValueError` if invalid (nothing
        changes then)."""
        changes = dict(changes)
        start = Faults() if changes.pop("reset", False) else self
        known = {knob.name for knob in fields(Faults)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault knob(s) {unknown}; known: {sorted(known)}")
        for name, value in changes.items():
            _check(name, value)
        candidate = Faults(**{**asdict(start), **changes})
        if candidate.kill_on_marker > 0 and not candidate.kill_marker:
            raise ValueError("kill_on_marker needs kill_marker: the text that kills a sandbox when printed")
        if not 400 <= candidate.fail_status <= 599:
            raise ValueError(f"fail_status={candidate.fail_status}: use an HTTP error status (400-599)")
        for knob in fields(self):
            setattr(self, knob.name, getattr(candidate, knob.name))
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check(name: str, value: Any) -> None:
    if name in ("kill_marker", "freeze_lifetime_marker"):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name}={value!r} must be a non-empty string (or None)")
        return
    optional = name in ("retry_after", "drop_stream_after_lines")
    if value is None and optional:
        return
    whole = name != "retry_after"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name}={value!r} must be a number >= 0")
    if whole and value != int(value):
        raise ValueError(f"{name}={value!r} must be a whole number")

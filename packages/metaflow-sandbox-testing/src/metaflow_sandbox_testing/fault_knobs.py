"""Fault-injection knobs, the part every emulator shares (standard library only: the handles use it too).

Each emulator's `Faults` is a dataclass of knobs on top of `FaultKnobs`. Knobs are set when the emulator starts
(`--faults JSON`, `<Emulator>(faults=...)`) or while it runs (`POST /_emulator/faults`, `<Emulator>.faults(...)`);
unset knobs keep their value. Every fault fires on an event the test controls (the Nth request, a line a
command prints, the Nth line or frame of a stream), never after a delay: a slow machine sees the same faults as
a fast one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, TypeVar

_K = TypeVar("_K", bound="FaultKnobs")


@dataclass
class FaultKnobs:
    """The knobs every emulator has. A knob's annotation decides how a new value is checked: `int` a whole
    number >= 0, `float` a number >= 0, `str` a non-empty string or one of `CHOICES`; `| None` admits None."""

    #: Allowed values of string knobs that are a choice.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Knobs that existed once, and what replaces them.
    REMOVED: ClassVar[dict[str, str]] = {}

    #: The next N creates fail with HTTP `fail_status` (nothing is created).
    fail_creates: int = 0
    #: Status of those failures (503, 429, 500, ...).
    fail_status: int = 503
    #: Seconds sent as `Retry-After` with those failures (None: no header).
    retry_after: float | None = None
    #: The next N sandboxes whose command prints `kill_marker` (stdout or stderr) die right then: every process
    #: is SIGKILLed (exit code 137) and the sandbox is gone (404 from then on). Others are not touched.
    kill_on_marker: int = 0
    #: The text that triggers `kill_on_marker` (required while it is above 0).
    kill_marker: str | None = None

    def update(self: _K, changes: Mapping[str, Any]) -> _K:
        """Apply `changes` (knob -> value; `"reset": true` first restores the defaults). `ValueError` if
        invalid, and then nothing changes."""
        changes = dict(changes)
        start = type(self)() if changes.pop("reset", False) else self
        candidate = replace(start, **self._checked(changes))
        if candidate.kill_on_marker > 0 and not candidate.kill_marker:
            raise ValueError(
                "kill_on_marker needs kill_marker: the text whose appearance in a command's output kills "
                "its sandbox"
            )
        if not 400 <= candidate.fail_status <= 599:
            raise ValueError(f"fail_status={candidate.fail_status}: use an HTTP error status (400-599)")
        for knob in fields(self):
            setattr(self, knob.name, getattr(candidate, knob.name))
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def _checked(cls, changes: Mapping[str, Any]) -> dict[str, Any]:
        for name in sorted(set(changes) & set(cls.REMOVED)):
            raise ValueError(
                f"fault knob {name!r} was removed (faults are event-based); use {cls.REMOVED[name]}"
            )
        kinds = {knob.name: str(knob.type) for knob in fields(cls)}
        unknown = sorted(set(changes) - set(kinds))
        if unknown:
            raise ValueError(f"unknown fault knob(s) {unknown}; known: {sorted(kinds)}")
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            kind, _, optional = kinds[name].partition("|")
            kind = kind.strip()
            if value is None and optional:
                checked[name] = None
            elif name in cls.CHOICES:
                if value not in cls.CHOICES[name]:
                    raise ValueError(f"{name}={value!r}: use one of {list(cls.CHOICES[name])}")
                checked[name] = value
            elif kind == "str":
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{name}={value!r} must be a non-empty string (or None)")
                checked[name] = value
            else:
                checked[name] = _number(name, value, int if kind == "int" else float)
        return checked


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
    if kind is int and value != int(value):
        raise ValueError(f"{name}={value!r} must be a whole number")
    if value < 0:
        raise ValueError(f"{name}={value!r} must be >= 0")
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

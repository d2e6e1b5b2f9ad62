"""Limits on sandbox creation, shared by every process of this user on this machine.

A foreach fans out into one task process each (or one host process with many threads); a provider that
allows N creations a minute, or a machine that can boot only a few micro-VMs at once, must see the sum.
`Backend.create` waits here before it calls the backend's `_create`, with the limits the backend declares
in its `Capabilities` (`max_creates_per_minute`, `max_concurrent_creates`); the user may override each per
backend with `METAFLOW_SANDBOX_<NAME>_CREATES_PER_MINUTE` and `METAFLOW_SANDBOX_<NAME>_CONCURRENT_CREATES`
(0 turns a limit off).

- Rate: a token bucket in `<state_dir>/create-throttle.json`, updated under an exclusive `flock`: up to
  `per_minute` creations at once, then `per_minute / 60` per second.
- Concurrency: creations in progress hold one of `concurrent` slot files (`create-slot-<i>.lock`) under
  `flock`; the kernel frees a slot when its holder exits, however it exits.

When the state directory cannot be used (or the platform has no `flock`), the limits hold for this process
only (with one warning).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .backend import Capabilities

RATE_SETTING = "CREATES_PER_MINUTE"
CONCURRENCY_SETTING = "CONCURRENT_CREATES"
STATE_DIR_SETTING = "STATE_DIR"

log = logging.getLogger(__name__)


def setting_name(backend: str, setting: str) -> str:
    """`METAFLOW_SANDBOX_<BACKEND>_<SETTING>`, e.g. `METAFLOW_SANDBOX_DAYTONA_CREATES_PER_MINUTE`."""
    return f"METAFLOW_SANDBOX_{re.sub(r'[^A-Z0-9]', '_', backend.upper())}_{setting}"


def _setting(name: str, default: float | None, what: str, whole: bool = False) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or math.isinf(value) or (whole and not value.is_integer()):
        raise ConfigError(f"{name}={raw!r} must be a {what} (0 turns the limit off).")
    return value


def create_limits(backend: str, capabilities: Capabilities) -> tuple[float, int]:
    """(creations per minute, creations at once) for `backend`, 0 meaning no limit: the declared
    capabilities, overridden by the user's settings. `ConfigError` for a malformed setting."""
    rate = _setting(
        setting_name(backend, RATE_SETTING),
        capabilities.max_creates_per_minute,
        "number of creations per minute",
    )
    concurrent = _setting(
        setting_name(backend, CONCURRENCY_SETTING),
        capabilities.max_concurrent_creates,
        "whole number of creations at once",
        whole=True,
    )
    return float(rate or 0), int(concurrent or 0)


class CreateLimiter:
    """Waits until a creation may start: a free slot (at most `concurrent` in progress) and a token (at most
    `per_minute` a minute, `burst` at once, default `per_minute`). 0 turns either off; with both off,
    nothing touches the disk."""

    THROTTLE_FILE = "create-throttle.json"
    SLOT_FILE = "create-slot-{}.lock"

    def __init__(
        self,
        state_dir: str,
        *,
        per_minute: float = 0,
        concurrent: int = 0,
        burst: float | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll: float = 0.05,
    ):
        self.state_dir = state_dir
        self.per_minute = per_minute
        self.concurrent = concurrent
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, burst if burst is not None else per_minute)
        self.path = os.path.join(state_dir, self.THROTTLE_FILE)
        self.clock = clock
        self.sleep = sleep
        self.poll = poll
        self._local_lock = threading.Lock()  # also serialises threads of one process around the file
        self._local_tokens: dict[str, float] | None = None  # used when the state file cannot be written
        self._local_slots: threading.BoundedSemaphore | None = None  # ... and the slot files

    @property
    def settings(self) -> tuple[float, int, str]:
        return self.per_minute, self.concurrent, self.state_dir

    @contextlib.contextmanager
    def hold(self) -> Iterator[float]:
        """Wait for a slot, then a token; yield the seconds waited. The slot is free again on leaving."""
        if self.concurrent <= 0:
            yield self.acquire()
            return
        waited, release = self._take_slot()
        try:
            yield waited + self.acquire()
        finally:
            release()

    # -- rate ---------------------------------------------------------------------------------------

    def acquire(self) -> float:
        """Take one token, waiting for it if need be; return the seconds waited."""
        if self.rate <= 0:
            return 0.0
        waited = 0.0
        while True:
            wait = self._take_token()
            if wait <= 0:
                return waited
            pause = min(wait, 1.0)
            self.sleep(pause)
            waited += pause

    def _take_token(self) -> float:
        """Take a token if there is one (→ 0), else the seconds until there will be one."""
        with self._local_lock:
            if self._local_tokens is None:
                try:
                    return self._take_shared_token()
                except OSError as error:
                    self._fall_back(error)
                    self._local_tokens = {}
            return self._take_from(self._local_tokens)

    def _take_shared_token(self) -> float:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+", encoding="utf-8") as file:
            _flock(file.fileno(), blocking=True)  # released when the file is closed
            state: dict[str, float] = {}
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                loaded = json.loads(file.read() or "{}")
                state = {"tokens": float(loaded["tokens"]), "at": float(loaded["at"])}
            wait = self._take_from(state)
            file.seek(0)
            file.truncate()
            file.write(json.dumps(state))
            return wait

    def _take_from(self, state: dict[str, float]) -> float:
        now = self.clock()
        tokens = state.get("tokens", self.capacity)
        elapsed = max(0.0, now - state.get("at", now))  # a clock that went back refills nothing
        tokens = min(self.capacity, tokens + elapsed * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        state["tokens"], state["at"] = tokens, now
        return wait

    # -- concurrency --------------------------------------------------------------------------------

    def _take_slot(self) -> tuple[float, Callable[[], None]]:
        waited = 0.0
        while True:
            if self._local_slots is None:
                try:
                    fd = self._try_slot_files()
                except OSError as error:
                    self._fall_back(error)
                    self._local_slots = threading.BoundedSemaphore(self.concurrent)
                    continue
                if fd is not None:
                    return waited, functools.partial(os.close, fd)
            elif self._local_slots.acquire(timeout=self.poll):
                return waited, self._local_slots.release
            else:
                waited += self.poll
                continue
            self.sleep(self.poll)
            waited += self.poll

    def _try_slot_files(self) -> int | None:
        """An open descriptor holding a free slot's lock, or None when every slot is taken."""
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        for index in range(self.concurrent):
            path = os.path.join(self.state_dir, self.SLOT_FILE.format(index))
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                _flock(fd, blocking=False)  # per open file: threads of one process exclude each other too
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return fd
        return None

    def _fall_back(self, error: OSError) -> None:
        log.warning("Create limiter: cannot use %s (%s); limiting this process only.", self.state_dir, error)


def _flock(fd: int, *, blocking: bool) -> None:
    """An exclusive `flock` on `fd`; `BlockingIOError` when not `blocking` and it is held elsewhere, `OSError`
    where the platform has none."""
    try:
        import fcntl
    except ImportError as error:
        raise OSError(f"no flock on this platform ({error})") from None
    fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)

"""A client-side limit on sandbox creations, shared by every launcher process of this user on this machine.

Daytona allows 600 creations per minute; a foreach fan-out of many tasks (one launcher process each) would
otherwise hit 429s. The limit is a token bucket kept in a small JSON file under the state directory and
updated under an exclusive `flock`, so all processes draw from one bucket: up to `per_minute` creations at
once, then `per_minute / 60` per second.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable

from metaflow_sandbox_core import ConfigError
from metaflow_sandbox_core import default_state_dir as shared_state_dir

RATE_ENV = "METAFLOW_SANDBOX_DAYTONA_CREATES_PER_MINUTE"
STATE_DIR_ENV = "METAFLOW_SANDBOX_DAYTONA_STATE_DIR"
DEFAULT_CREATES_PER_MINUTE = 600.0

log = logging.getLogger(__name__)


def default_state_dir() -> str:
    """`${STATE_DIR_ENV}`, else a per-user directory (see `metaflow_sandbox_core.default_state_dir`)."""
    return shared_state_dir("daytona", STATE_DIR_ENV)


def creates_per_minute_from_env() -> float:
    """`$METAFLOW_SANDBOX_DAYTONA_CREATES_PER_MINUTE` (default 600; 0 turns the limit off)."""
    raw = os.environ.get(RATE_ENV, "").strip()
    if not raw:
        return DEFAULT_CREATES_PER_MINUTE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigError(
            f"{RATE_ENV}={raw!r} must be a number of creations per minute (0 turns the limit off)."
        )
    return value


class CreateThrottle:
    """A token bucket in `<state_dir>/create-throttle.json`: `per_minute` tokens at most (or `burst`),
    refilled at `per_minute / 60` per second. `per_minute=0` never waits."""

    FILE_NAME = "create-throttle.json"

    def __init__(
        self,
        per_minute: float,
        state_dir: str,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, burst if burst is not None else per_minute)
        self.path = os.path.join(state_dir, self.FILE_NAME)
        self.clock = clock
        self.sleep = sleep
        self._local_lock = threading.Lock()  # also serialises threads of one process (flock is per file)
        self._fallback: dict[str, float] | None = None  # used when the state file cannot be written

    def acquire(self) -> float:
        """Take one token, waiting for it if need be; return the seconds waited."""
        if self.rate <= 0:
            return 0.0
        waited = 0.0
        while True:
            wait = self._take()
            if wait <= 0:
                return waited
            pause = min(wait, 1.0)
            self.sleep(pause)
            waited += pause

    def _take(self) -> float:
        """Take a token if there is one (→ 0), else the seconds until there will be one."""
        with self._local_lock:
            try:
                return self._take_shared()
            except OSError as error:
                if self._fallback is None:
                    log.warning(
                        "Daytona create throttle: cannot use %s (%s); limiting this process only.",
                        self.path,
                        error,
                    )
                    self._fallback = {}
                return self._take_from(self._fallback)

    def _take_shared(self) -> float:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)  # released when the file is closed
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

"""Retrying infrastructure calls with exponential backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import SandboxError

T = TypeVar("T")


def call_with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 4,
    base_delay: float = 0.5,
    max_delay: float = 20.0,
    on_retry: Callable[[SandboxError, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn`; on a retryable `SandboxError` wait (jittered exponential, or `retry_after`) and retry."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except SandboxError as error:
            if not error.retryable or attempt == attempts:
                raise
            hint = getattr(error, "retry_after", None)
            delay = hint if hint is not None else min(max_delay, base_delay * 2 ** (attempt - 1))
            delay *= 1 + random.random() * 0.25
            if on_retry is not None:
                on_retry(error, delay)
            sleep(delay)
    raise AssertionError("unreachable")

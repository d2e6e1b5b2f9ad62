"""Retrying infrastructure calls: exponential backoff with jitter, or the server's `Retry-After`.

One policy (`RetryPolicy`), two loops: `call_with_retries` for plain calls and `call_with_retries_async` for
coroutines (async SDKs on the `aio` loop).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import SandboxError

T = TypeVar("T")

OnRetry = Callable[[SandboxError, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` in all; retryable `SandboxError`s only. The wait is the error's `retry_after` when it has
    one (a 429's `Retry-After`), else `base_delay` doubling per attempt up to `max_delay`; then plus up to
    `jitter` of itself at random, so that many clients do not retry in step."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    jitter: float = 0.25

    def delay(self, error: BaseException, attempt: int) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (from 1), or None to give up."""
        if not isinstance(error, SandboxError) or not error.retryable or attempt >= self.attempts:
            return None
        hint = getattr(error, "retry_after", None)
        delay = hint if hint is not None else min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return float(delay) * (1 + random.random() * self.jitter)


def call_with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 4,
    base_delay: float = 0.5,
    max_delay: float = 20.0,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], None] = time.sleep,
    policy: RetryPolicy | None = None,
) -> T:
    """Call `fn`; on a retryable `SandboxError` wait as `policy` says and call it again."""
    policy = policy or RetryPolicy(attempts, base_delay, max_delay)
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except SandboxError as error:
            delay = policy.delay(error, attempt)
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(error, delay)
            sleep(delay)


async def call_with_retries_async(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = 4,
    base_delay: float = 0.5,
    max_delay: float = 20.0,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], Awaitable[object]] | None = None,
    policy: RetryPolicy | None = None,
) -> T:
    """`call_with_retries` for a coroutine function: await `fn()`, waiting with `asyncio.sleep` between tries."""
    if sleep is None:
        import asyncio  # here: core's plain users never pay for importing asyncio

        sleep = asyncio.sleep
    policy = policy or RetryPolicy(attempts, base_delay, max_delay)
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except SandboxError as error:
            delay = policy.delay(error, attempt)
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(error, delay)
            await sleep(delay)

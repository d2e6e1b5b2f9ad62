"""Removals queued after a task's result run in order, survive failures, and are done when drained."""

from __future__ import annotations

import threading

from metaflow_sandbox_core import housekeeping


def test_queued_work_runs_in_order_off_the_caller_thread_and_drain_waits_for_it():
    release = threading.Event()
    done: list[tuple[int, str]] = []

    def slow() -> None:
        release.wait(10)
        done.append((1, threading.current_thread().name))

    housekeeping.later(slow)
    housekeeping.later(lambda: done.append((2, threading.current_thread().name)))
    assert done == []  # the caller was not held up
    release.set()
    housekeeping.drain()
    assert done == [(1, "housekeeping"), (2, "housekeeping")]


def test_a_failing_call_is_logged_and_the_next_still_runs(caplog):
    done: list[int] = []

    def fail() -> None:
        raise OSError("gone already")

    housekeeping.later(fail)
    housekeeping.later(lambda: done.append(1))
    housekeeping.drain()
    assert done == [1]
    assert "gone already" in caplog.text

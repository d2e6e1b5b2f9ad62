"""The warm pool's bookkeeping: how many sandboxes it makes ahead, who gets them, and when they are destroyed."""

import threading
import time

from metaflow_extensions.sandbox.plugins.sandbox import warm_pool
from metaflow_extensions.sandbox.plugins.sandbox.warm_pool import WarmPool


class FakeSandbox:
    """Stands in for a backend's sandbox: the pool only hands it out and destroys it."""

    made = 0

    def __init__(self):
        FakeSandbox.made += 1
        self.id = FakeSandbox.made
        self.destroyed = threading.Event()

    def destroy(self):
        self.destroyed.set()


def _pool():
    logged = []
    return WarmPool(logged.append), logged


def _settle(pool):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        not e.future.done() for g in pool._groups.values() for e in g.ready
    ):
        time.sleep(0.01)


def test_makes_one_per_split_still_to_come_up_to_max_workers_and_hands_each_out_once():
    pool, _ = _pool()
    made = []

    def make(making):
        made.append(FakeSandbox())
        return made[-1]

    assert (
        pool.arrive("g", size=10, max_workers=3, first_attempt=True) is None
    )  # the first task makes its own
    pool.fill("g", make)
    _settle(pool)
    assert len(made) == 3 and pool.count() == 3
    taken = [pool.arrive("g", 10, 3, True) for _ in range(3)]
    assert sorted(s.id for s in taken) == sorted(s.id for s in made)  # each exactly once
    pool.fill("g", make)
    _settle(pool)
    assert pool.count() == 3  # 6 of 10 to come, at most 3 ahead
    for _ in range(6):
        pool.arrive("g", 10, 3, True)
        pool.fill("g", make)
    _settle(pool)
    assert pool.count() == 0, "nothing is made for splits that will never come"
    assert len(made) == 9  # one per task after the first


def test_a_failed_task_stops_the_group_and_destroys_what_was_made():
    pool, _ = _pool()
    made = []
    pool.arrive("g", 5, 4, True)
    pool.fill("g", lambda making: made.append(FakeSandbox()) or made[-1])
    _settle(pool)
    pool.drop("g")
    assert all(s.destroyed.is_set() for s in made) and pool.count() == 0
    pool.arrive("g", 5, 4, False)  # a retry of the failed task
    pool.fill("g", lambda making: made.append(FakeSandbox()) or made[-1])
    assert pool.count() == 0 and len(made) == 4


def test_a_failed_maker_means_the_task_makes_its_own():
    pool, logged = _pool()
    pool.arrive("g", 3, 2, True)

    def broken(making):
        raise RuntimeError("quota exceeded")

    pool.fill("g", broken)
    assert pool.arrive("g", 3, 2, True) is None
    assert any("quota exceeded" in line for line in logged)


def test_idle_groups_and_old_sandboxes_are_destroyed(monkeypatch):
    pool, _ = _pool()
    made = []
    pool.arrive("g", 5, 2, True)
    pool.fill("g", lambda making: made.append(FakeSandbox()) or made[-1])
    _settle(pool)
    pool.expire()
    assert pool.count() == 2  # still fresh
    monkeypatch.setattr(warm_pool, "IDLE_SECONDS", 0.0)
    pool.expire()
    assert pool.count() == 0 and all(s.destroyed.wait(5) for s in made)


def test_close_destroys_sandboxes_still_being_made():
    pool, _ = _pool()
    release = threading.Event()
    made = []

    def slow(making):
        release.wait(5)
        made.append(FakeSandbox())
        return made[-1]

    pool.arrive("g", 3, 2, True)
    pool.fill("g", slow)
    threading.Timer(0.2, release.set).start()
    pool.close(wait=5)
    assert len(made) == 2 and all(s.destroyed.is_set() for s in made)


def test_a_sandbox_still_being_prepared_is_destroyed_as_soon_as_its_group_is_given_up():
    """Its preparation may take long (a package to fetch): the group's end must not wait for it."""
    pool, logged = _pool()
    created, gave_up = threading.Event(), threading.Event()
    sandboxes = []

    def prepare(making):
        sandboxes.append(FakeSandbox())
        making.created(sandboxes[-1])
        created.set()
        sandboxes[-1].destroyed.wait(10)  # as a bootstrap ends when its sandbox is destroyed
        gave_up.set()
        raise RuntimeError("the sandbox was destroyed")

    pool.arrive("g", 3, 1, True)
    pool.fill("g", prepare)
    assert created.wait(5)
    pool.drop("g")
    assert sandboxes[0].destroyed.is_set(), "destroyed only once its preparation ended"
    assert gave_up.wait(5) and logged == [], "a sandbox given up on purpose is not a failure to report"

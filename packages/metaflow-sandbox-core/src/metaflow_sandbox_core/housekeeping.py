"""Work that must be done but need not delay a task's result: removing what a finished task left behind.

One worker thread per process runs what `later` queues, in order. `drain` (also at interpreter exit) waits
until the queue is empty, so a process that ends normally leaves nothing behind.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_queue: queue.Queue[Callable[[], object]] = queue.Queue()
_lock = threading.Lock()
_worker: threading.Thread | None = None


def later(call: Callable[[], object]) -> None:
    """Run `call` soon on the housekeeping thread (its exceptions are logged, never raised)."""
    global _worker
    with _lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_work, name="housekeeping", daemon=True)
            _worker.start()
    _queue.put(call)


def _work() -> None:
    while True:
        call = _queue.get()
        try:
            call()
        except Exception as error:  # housekeeping must not take the process down
            log.warning("Housekeeping failed: %s", error)
        finally:
            _queue.task_done()


@atexit.register
def drain() -> None:
    """Wait until everything queued so far has run."""
    _queue.join()

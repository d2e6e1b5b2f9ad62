"""The relay's round trips to a remote store run concurrently, without changing what is written in which order."""

from __future__ import annotations

import threading

import pytest

from metaflow_sandbox_relay.datastore_ingest import apply_to_datastore
from metaflow_sandbox_relay.stores import each
from metaflow_sandbox_relay.vetting import VettedTask


def test_each_runs_calls_at_once_and_keeps_their_order():
    barrier = threading.Barrier(4, timeout=10)  # broken (and the test failed) unless 4 calls wait together

    def call(n: int) -> int:
        barrier.wait()
        return n * n

    assert each(4, call, [1, 2, 3, 4]) == [1, 4, 9, 16]


def test_each_is_sequential_for_a_local_store_and_raises_the_first_failure():
    seen: list[int] = []

    def call(n: int) -> int:
        seen.append(n)
        if n == 2:
            raise ValueError("two")
        return n

    with pytest.raises(ValueError, match="two"):
        each(1, call, [1, 2, 3])
    assert seen == [1, 2]  # nothing after the failure ran
    with pytest.raises(ValueError, match="two"):
        each(8, call, [1, 2, 3])


def test_each_keeps_to_its_concurrency_on_the_shared_pool_and_nests_without_waiting_on_itself():
    lock = threading.Lock()
    now = peak = 0

    def call(n: int) -> int:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        threading.Event().wait(0.01)
        with lock:
            now -= 1
        return n

    assert each(2, call, range(8)) == list(range(8))
    assert peak <= 2
    # Every pool thread busy with a call that itself calls `each`: the inner calls run in turn, no deadlock.
    inner = [[i, i + 1] for i in range(40)]
    assert each(40, lambda pair: sum(each(8, call, pair)), inner) == [2 * i + 1 for i in range(40)]


def test_each_starts_nothing_after_a_failure():
    started: list[int] = []
    gate = threading.Event()

    def call(n: int) -> int:
        started.append(n)
        if n == 0:
            raise ValueError("zero")
        gate.wait(10)  # the second call is still running when the first fails
        return n

    def release() -> None:
        while len(started) < 2:
            threading.Event().wait(0.01)
        threading.Event().wait(0.1)
        gate.set()

    threading.Thread(target=release).start()
    with pytest.raises(ValueError, match="zero"):
        each(2, call, range(10))
    assert sorted(started) == [0, 1]


class _RecordingStore:
    concurrency = 8

    def __init__(self, existing: tuple[str, ...] = ()) -> None:
        self.order: list[str] = []
        self.existing = set(existing)
        self.lock = threading.Lock()

    def exists(self, rel: str) -> bool:
        with self.lock:
            self.order.append(f"HEAD {rel}")
        return rel in self.existing

    def put(self, rel: str, source: str, meta: dict | None = None, *, absent: bool = False) -> bool:
        assert absent  # asked already, all at once
        with self.lock:
            self.order.append(rel)
        return True


def test_blobs_then_task_files_then_the_done_lock_alone():
    vetted = VettedTask(
        blobs=[(f"F/data/ab/ab{i}", "copy", True) for i in range(5)],
        task_files=[
            ("F/1/s/2/0.DONE.lock", "c"),
            ("F/1/s/2/0.data.json", "c"),
            ("F/1/s/2/0.task_stdout.log", "c"),
        ],
    )
    store = _RecordingStore(existing=("F/data/ab/ab0",))  # e.g. stored by another task meanwhile
    apply_to_datastore(vetted, store)  # type: ignore[arg-type]
    heads, puts = store.order[:8], store.order[8:]
    assert all(entry.startswith("HEAD ") for entry in heads)  # every existence check before any write
    assert sorted(puts[:4]) == [f"F/data/ab/ab{i}" for i in range(1, 5)]  # the stored one is not rewritten
    assert sorted(puts[4:6]) == ["F/1/s/2/0.data.json", "F/1/s/2/0.task_stdout.log"]
    assert puts[6:] == ["F/1/s/2/0.DONE.lock"]


def test_a_remote_store_s_inputs_are_read_while_the_task_s_files_are(tmp_path):
    """Vetting a foreach child needs its input's listing; against S3 it is read meanwhile, not after."""
    import hashlib
    import json
    import os
    import pickle

    from metaflow_sandbox_relay import (
        LocalDatastore,
        LocalStaging,
        TaskPolicy,
        TaskScope,
        collect_staged_task,
    )
    from metaflow_sandbox_relay.vetting import vet_task

    together = threading.Barrier(2, timeout=10)  # broken unless the input read and the task's files' overlap

    class RemoteLike(LocalDatastore):
        concurrency = 8

        def listdir(self, rel):
            if rel == "F/7/start/1":
                together.wait()
            return super().listdir(rel)

    class Staging(LocalStaging):
        def open(self, rel):
            if rel.endswith("data.json"):  # the task's listing, read first
                together.wait()
            return super().open(rel)

    stage, real, scratch = (str(tmp_path / name) for name in ("stage", "real", "scratch"))
    os.makedirs(scratch)
    payload = pickle.dumps([1, 2], protocol=4)
    sha = hashlib.sha1(payload).hexdigest()
    items = json.dumps({"objects": {"items": sha}, "info": {"items": {"size": 9, "encoding": "pickle-v4"}}})
    _write(real, f"F/data/{sha[:2]}/{sha}", "stored by the input")
    _write(real, "F/7/start/1/0.data.json", items)
    _write(real, "F/7/start/1/0.DONE.lock", "")
    _write(stage, "F/7/s/3/0.data.json", items)  # the child lists its input's artifact
    scope = TaskScope(flow="F", run_id="7", step="s", task_id="3", attempt=0)
    staged = collect_staged_task(Staging(stage), scope)
    policy = TaskPolicy(ds_root=real, parents=("7/start/1",))
    vetted = vet_task(staged, RemoteLike(real), policy, scratch, lambda _: None)
    assert vetted.blobs == [] and [rel for rel, _ in vetted.task_files] == ["F/7/s/3/0.data.json"]


def _write(root, rel, data):
    import os

    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def _foreach_child(tmp_path, store_class, stored_elsewhere=2):
    """A foreach child on a remote-like store: it lists its input's artifact and `stored_elsewhere` blobs the
    flow holds from other tasks (e.g. an equal value), none of which it staged. (staged, policy, scratch, store)."""
    import gzip
    import hashlib
    import json
    import os
    import pickle

    from metaflow_sandbox_relay import LocalStaging, TaskPolicy, TaskScope, collect_staged_task

    stage, real, scratch = (str(tmp_path / name) for name in ("stage", "real", "scratch"))
    os.makedirs(scratch)
    names = {}
    for name, value in [("items", [1, 2]), *[(f"same{i}", i) for i in range(stored_elsewhere)]]:
        payload = pickle.dumps(value, protocol=4)
        sha = hashlib.sha1(payload).hexdigest()
        _write(real, f"F/data/{sha[:2]}/{sha}", gzip.compress(payload))  # as Metaflow stores a blob
        names[name] = sha
    info = {name: {"size": 9, "encoding": "pickle-v4"} for name in names}
    listing = json.dumps({"objects": names, "info": info}).encode()
    _write(real, "F/7/start/1/0.data.json", json.dumps({"objects": {"items": names["items"]}}).encode())
    _write(real, "F/7/start/1/0.DONE.lock", b"")
    _write(real, "F/7/s/3/0.task_stdout.log", b"written before (by another attempt's relay, say)")
    _write(stage, "F/7/s/3/0.data.json", listing)
    _write(stage, "F/7/s/3/0.task_stdout.log", b"out")
    scope = TaskScope(flow="F", run_id="7", step="s", task_id="3", attempt=0)
    staged = collect_staged_task(LocalStaging(stage), scope)
    return staged, TaskPolicy(ds_root=real, parents=("7/start/1",)), scratch, store_class(real), names


def test_an_input_s_artifacts_are_not_asked_for_and_the_destination_is_asked_while_files_are_read(tmp_path):
    from metaflow_sandbox_relay import LocalDatastore
    from metaflow_sandbox_relay.vetting import vet_task

    asked: list[str] = []

    class RemoteLike(LocalDatastore):
        concurrency = 8

        def exists(self, rel):
            asked.append(rel)
            return super().exists(rel)

        def version(self, rel):
            asked.append(rel)
            return super().version(rel)

    staged, policy, scratch, store, names = _foreach_child(tmp_path, RemoteLike)
    vetted = vet_task(staged, store, policy, scratch, lambda _: None)
    items = f"F/data/{names['items'][:2]}/{names['items']}"
    assert items not in asked, "an input's artifact was asked for: the input's listing says it is stored"
    assert vetted.present == {"F/7/s/3/0.task_stdout.log"}  # the destination's answer came with vetting
    assert not [rel for rel in asked if rel.startswith("F/7/s/3/")], "the task's directory is listed once"
    asked.clear()
    apply_to_datastore(vetted, store)
    assert asked == [], "apply asked again what vetting already knew"


def test_blobs_already_stored_are_scanned_at_once(tmp_path):
    from metaflow_sandbox_relay import LocalDatastore
    from metaflow_sandbox_relay.vetting import vet_task

    together = threading.Barrier(2, timeout=10)  # broken (and vetting fails) unless the two scans overlap

    class RemoteLike(LocalDatastore):
        concurrency = 8

        def open(self, rel, version=None):
            if "/data/" in rel:
                together.wait()
            return super().open(rel, version)

    staged, policy, scratch, store, _ = _foreach_child(tmp_path, RemoteLike, stored_elsewhere=2)
    vetted = vet_task(staged, store, policy, scratch, lambda _: None)
    assert vetted.blobs == []


def test_a_stored_blob_found_safe_is_read_once_until_it_is_rewritten(tmp_path):
    """A foreach's tasks list the same stored artifacts: once one is found safe, the next task asks only its
    version. Rewritten (another version), it is read and checked again: here it now refers to os.system."""
    import gzip
    import os

    from metaflow_sandbox_relay import LocalDatastore, RelayRefusedError
    from metaflow_sandbox_relay.vetting import vet_task

    opened: list[str] = []

    class RemoteLike(LocalDatastore):
        concurrency = 8

        def open(self, rel, version=None):
            opened.append(rel)
            return super().open(rel, version)

    staged, policy, scratch, store, names = _foreach_child(tmp_path, RemoteLike, stored_elsewhere=1)
    same = f"F/data/{names['same0'][:2]}/{names['same0']}"
    vet_task(staged, store, policy, scratch, lambda _: None)
    assert opened.count(same) == 1
    vet_task(staged, store, policy, scratch, lambda _: None)  # the next task of the foreach, say
    assert opened.count(same) == 1, "read again though its version had not changed"

    os.unlink(store.path(same))
    _write(store.root, same, gzip.compress(b"cos\nsystem\n(S'true'\ntR."))
    with pytest.raises(RelayRefusedError, match="cannot be loaded safely"):
        vet_task(staged, store, policy, scratch, lambda _: None)
    assert opened.count(same) == 2


def test_a_stored_blob_without_a_version_is_read_for_every_task(tmp_path):
    """A store whose answers name no version (no ETag) could have rewritten the blob unseen: the verdict is
    not remembered."""
    from metaflow_sandbox_relay import LocalDatastore
    from metaflow_sandbox_relay.vetting import vet_task

    opened: list[str] = []

    class Versionless(LocalDatastore):
        concurrency = 8

        def version(self, rel):
            return None if super().version(rel) is None else ""

        def open(self, rel, version=None):
            opened.append(rel)
            return super().open(rel, version)

    staged, policy, scratch, store, names = _foreach_child(tmp_path, Versionless, stored_elsewhere=1)
    same = f"F/data/{names['same0'][:2]}/{names['same0']}"
    for _task in range(2):
        vet_task(staged, store, policy, scratch, lambda _: None)
    assert opened.count(same) == 2


def test_a_stored_blob_rewritten_while_it_is_read_is_read_again(tmp_path):
    """Two tasks of a foreach may both store a blob they share (its gzip bytes differ, so its ETag changes):
    a third task's relay that asked about the first version reads the one now stored, and is not failed."""
    from metaflow_sandbox_relay import LocalDatastore
    from metaflow_sandbox_relay.stores import Rewritten
    from metaflow_sandbox_relay.vetting import vet_task

    asked: list[str | None] = []

    class RewrittenOnce(LocalDatastore):
        concurrency = 8
        rewrites = 1

        def version(self, rel):
            found = super().version(rel)
            return None if found is None else f"{found}:{self.rewrites}"

        def open(self, rel, version=None):
            if "/data/" not in rel:
                return super().open(rel, version)
            asked.append(version)
            if self.rewrites:
                self.rewrites -= 1  # another relay stored it again after its version was asked
                raise Rewritten(rel)
            return super().open(rel, version)

    staged, policy, scratch, store, _ = _foreach_child(tmp_path, RewrittenOnce, stored_elsewhere=1)
    vetted = vet_task(staged, store, policy, scratch, lambda _: None)
    assert vetted.blobs == []
    assert len(asked) == 2 and asked[0] != asked[1], "read again, as the version now stored"


def test_a_finished_input_is_read_once_for_all_its_children(tmp_path):
    """A foreach's children share their input: its listing, read for the first child, serves the next ones."""
    from metaflow_sandbox_relay import LocalDatastore
    from metaflow_sandbox_relay.vetting import vet_task

    listed: list[str] = []

    class RemoteLike(LocalDatastore):
        concurrency = 8

        def listdir(self, rel):
            listed.append(rel)
            return super().listdir(rel)

    staged, policy, scratch, store, _ = _foreach_child(tmp_path, RemoteLike)
    for _child in range(3):
        vet_task(staged, store, policy, scratch, lambda _: None)
    assert [rel for rel in listed if rel != "F/7/s/3"] == ["F/7/start/1"]  # (the child's own: what it holds)


def test_the_task_s_other_files_and_its_new_blobs_are_fetched_while_the_store_is_asked(tmp_path):
    """Once the listing is read, one round for the rest: the task's other files and the blobs it staged are
    fetched while the store is asked which listed blobs it holds."""
    import gzip
    import hashlib
    import pickle

    from metaflow_sandbox_relay import LocalDatastore, LocalStaging, collect_staged_task
    from metaflow_sandbox_relay.vetting import vet_task

    together = threading.Barrier(2, timeout=10)  # broken unless the fetch and the store's answer overlap
    fetched: list[list[str]] = []

    class RemoteLike(LocalDatastore):
        concurrency = 8

        def version(self, rel):
            together.wait()
            return super().version(rel)

    class Staging(LocalStaging):
        def prefetch(self, rels, sizes):
            if rels:
                fetched.append(list(rels))
                together.wait()

    staged, policy, scratch, store, names = _foreach_child(tmp_path, RemoteLike, stored_elsewhere=0)
    payload = pickle.dumps("new", protocol=4)
    sha = hashlib.sha1(payload).hexdigest()
    stage = staged.source.root  # type: ignore[union-attr]
    _write(stage, f"F/data/{sha[:2]}/{sha}", gzip.compress(payload))
    info = {"new": {"size": len(payload), "encoding": "pickle-v4"}}
    listing = {"objects": {**names, "new": sha}, "info": info}
    _write(stage, "F/7/s/3/0.data.json", __import__("json").dumps(listing))
    staged = collect_staged_task(Staging(stage), staged.scope)
    vetted = vet_task(staged, store, policy, scratch, lambda _: None)
    assert fetched[0] == ["F/7/s/3/0.task_stdout.log", f"F/data/{sha[:2]}/{sha}"]
    assert [rel for rel, _, _ in vetted.blobs] == [f"F/data/{sha[:2]}/{sha}"]

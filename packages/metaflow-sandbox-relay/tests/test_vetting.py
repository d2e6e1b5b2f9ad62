"""What of a staged task the relay applies: only what it checked, never over anything that exists."""

import gzip
import hashlib
import json
import os
import pickle
import stat

import pytest

from metaflow_sandbox_relay import (
    LocalDatastore,
    RelayRefusedError,
    TaskPolicy,
    TaskScope,
    apply_to_datastore,
    collect_staged_task,
    vet_task,
)

SCOPE = TaskScope(flow="F", run_id="7", step="s", task_id="3", attempt=0)
TASK = "F/7/s/3"


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/never-vetting",))


def write(root, rel, data, mode=None):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    return path


def stage_blob(root, obj, raw=False):
    payload = pickle.dumps(obj, protocol=4)
    sha = hashlib.sha1(payload).hexdigest()
    write(root, f"F/data/{sha[:2]}/{sha}", payload if raw else gzip.compress(payload))
    return sha, len(payload)


def listing(**artifacts):
    return json.dumps(
        {
            "objects": {name: sha for name, (sha, _) in artifacts.items()},
            "info": {name: {"size": size, "encoding": "pickle-v4"} for name, (_, size) in artifacts.items()},
        }
    )


@pytest.fixture
def env(tmp_path):
    stage, real, scratch = (str(tmp_path / name) for name in ("stage", "real", "scratch"))
    os.makedirs(scratch)
    os.makedirs(real)
    notes = []

    def vet(policy=None):
        policy = policy or TaskPolicy(ds_root=real, parents=("7/start/1",))
        staged = collect_staged_task(stage, SCOPE)
        return vet_task(staged, LocalDatastore(real), policy, scratch, notes.append)

    return stage, real, vet, notes


def test_unlisted_blobs_are_dropped_with_a_line(env):
    stage, real, vet, notes = env
    kept = stage_blob(stage, {"a": 1})
    planted = stage_blob(stage, Evil())  # hash-correct, never listed
    write(stage, f"{TASK}/0.data.json", listing(x=kept))
    vetted = vet()
    apply_to_datastore(vetted, LocalDatastore(real))
    assert os.path.exists(f"{real}/F/data/{kept[0][:2]}/{kept[0]}")
    assert not os.path.exists(f"{real}/F/data/{planted[0][:2]}/{planted[0]}")
    assert any("Dropped 1 blob(s)" in note for note in notes)


def test_an_attempt_without_data_json_applies_no_blob(env):
    stage, _real, vet, notes = env
    _sha, _ = stage_blob(stage, Evil())
    write(stage, f"{TASK}/0.task_stderr.log", "Traceback ...")
    vetted = vet()
    assert vetted.blobs == [] and [rel for rel, _ in vetted.task_files] == [f"{TASK}/0.task_stderr.log"]
    assert any("without a data.json" in note for note in notes)


def test_a_stored_blob_adopted_by_hash_is_checked_unless_an_input_lists_it(env):
    """The dedup path: the sandbox lists a blob that is already stored and stages nothing."""
    stage, real, vet, _ = env
    sha, size = stage_blob(real, Evil())  # planted in the datastore by some earlier escape
    write(real, f"F/data/{sha[:2]}/{sha}_meta", json.dumps({"cas_raw": False, "cas_version": 1}))
    write(stage, f"{TASK}/0.data.json", listing(x=(sha, size)))
    with pytest.raises(
        RelayRefusedError, match=r"already stored\) cannot be loaded safely: it references posix.system"
    ):
        vet()
    # The same blob, listed by the task's input: it came with the flow, it is not re-judged.
    write(real, "F/7/start/1/0.data.json", listing(x=(sha, size)))
    write(real, "F/7/start/1/0.DONE.lock", "")
    assert vet().blobs == []


def test_artifact_records_must_match_data_json(env):
    stage, real, vet, _ = env
    good = stage_blob(stage, 1)
    planted = stage_blob(real, 2)
    write(stage, f"{TASK}/0.data.json", listing(x=good))
    base = {"flow_id": "F", "run_number": "7", "step_name": "s", "task_id": "3", "attempt_id": 0}
    record = dict(base, name="x", sha=planted[0], ds_type="local", location=":root:" + real)
    write(stage, f"{TASK}/_meta/0_artifact_x.json", json.dumps(record))
    with pytest.raises(RelayRefusedError, match=r"does not match data\.json"):
        vet()
    write(stage, f"{TASK}/_meta/0_artifact_x.json", json.dumps(dict(record, sha=good[0])))
    write(stage, f"{TASK}/_meta/0_artifact_y.json", json.dumps(dict(record, name="y", sha=good[0])))
    with pytest.raises(RelayRefusedError, match=r"'y' that data\.json does not list"):
        vet()


@pytest.mark.parametrize(
    "field, value, exit_code, reason",
    [
        ("ds-root", "/elsewhere", 0, "claims ds-root"),
        ("log_location_stdout", "{}", 0, "points the client at other logs"),
        ("attempt_ok", "True", 1, "claims the attempt succeeded"),
        (
            "code-package",
            '{"ds_type": "local", "sha": "ab", "location": "/elsewhere"}',
            0,
            "names code package",
        ),
    ],
)
def test_metadata_records_are_cross_checked(env, field, value, exit_code, reason):
    stage, real, vet, _ = env
    record = {
        "flow_id": "F",
        "run_number": "7",
        "step_name": "s",
        "task_id": "3",
        "field_name": field,
        "value": value,
    }
    write(stage, f"{TASK}/_meta/sysmeta_{field}_1.json", json.dumps(record))
    with pytest.raises(RelayRefusedError, match=reason):
        vet(TaskPolicy(ds_root=real, exit_code=exit_code, code_package=("ab", real + "/F/data/ab/ab")))


def test_nothing_existing_is_overwritten_and_modes_are_fixed(env):
    stage, real, vet, _ = env
    existing = stage_blob(real, "old")
    sidecar = write(
        real, f"F/data/{existing[0][:2]}/{existing[0]}_meta", '{"cas_raw": false, "cas_version": 1}'
    )
    new = stage_blob(stage, "new")
    write(stage, f"F/data/{existing[0][:2]}/{existing[0]}_meta", '{"cas_raw": true, "cas_version": 1}')
    blob_path = os.path.join(stage, f"F/data/{new[0][:2]}/{new[0]}")
    os.chmod(blob_path, 0o6755)
    write(stage, f"{TASK}/0.data.json", listing(x=new, y=existing), mode=0o4777)
    write(stage, f"{TASK}/0.DONE.lock", "", mode=0o6777)
    write(real, "F/7/start/1/0.data.json", listing(y=existing))
    write(real, "F/7/start/1/0.DONE.lock", "")
    apply_to_datastore(vet(), LocalDatastore(real))
    with open(sidecar) as f:
        assert json.load(f)["cas_raw"] is False  # the staged sidecar never replaces the stored one
    for dirpath, _, files in os.walk(real):
        for name in files:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)
            assert not mode & 0o7111, f"{name} has mode {oct(mode)}"
    with open(os.path.join(real, f"F/data/{new[0][:2]}/{new[0]}_meta")) as f:
        assert json.load(f) == {"cas_raw": False, "cas_version": 1}  # derived from the check, not staged


def test_a_blob_far_larger_than_declared_is_refused_unread(env):
    stage, _real, vet, _ = env
    sha, size = stage_blob(stage, b"x")
    path = os.path.join(stage, f"F/data/{sha[:2]}/{sha}")
    with open(path, "r+b") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB that would take the launcher long to hash
    write(stage, f"{TASK}/0.data.json", listing(x=(sha, size)))
    with pytest.raises(RelayRefusedError, match="far more than the limit of its declared size"):
        vet()


def test_an_artifact_larger_than_the_step_could_have_pickled_is_refused_unread(env):
    """A 1 MB gzip stream that claims (and holds) a 1 GiB pickle, from a step with memory=256."""
    stage, real, vet, _ = env
    sha, size = stage_blob(stage, b"x" * 1000)
    write(stage, f"{TASK}/0.data.json", listing(x=(sha, size)))
    policy = TaskPolicy(ds_root=real, max_artifact_bytes=999, artifact_limit_reason="the step's memory=...")
    with pytest.raises(RelayRefusedError, match=r"declares \d+ bytes, more than the limit of 999 bytes"):
        vet(policy)


def test_what_the_host_remembers_across_tasks_is_bounded():
    from metaflow_sandbox_relay.vetting import FINISHED_INPUTS, SAFE_BLOBS, _Memo

    memo = _Memo(2)
    for key in "abc":
        memo.put(key, key.upper())
    assert memo.get("a") is None and memo.get("b") == "B" and memo.get("c") == "C"
    memo.get("b")  # used: the least recently used goes first
    memo.put("d", "D")
    assert memo.get("b") == "B" and memo.get("c") is None
    assert SAFE_BLOBS.entries <= 10_000 and FINISHED_INPUTS.entries <= 64

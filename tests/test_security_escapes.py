"""Red-team findings, each reproduced end to end as an attack through a real flow (tests/flows/attack_flow.py).

Every test asserts what must hold once the finding is fixed, so each one fails while its attack works:
the attack is refused with a clear line in the run's output (the task fails with exit 202, or the unlisted
blob is dropped with a line saying so), no host marker file ever exists, nothing of the attack reaches the
datastore, and earlier runs still load.

A host marker is a file in the test's tmp_path, which no sandbox mounts: only code unpickled on the
launcher (or in a client process) can create it.

Refusal wording is not pinned: a refusal line is a launcher line (`LAUNCHER` prefix) with one of the
loose keywords `REFUSED`; it names a bound when it also has one of `BOUND`.

Rows: every test runs in every full integration row (each backend x datastore, local metadata) where it
applies; the skips say why not elsewhere (setuid and sparse files need the local staging tree; /proc/sys and
keyrings need a real local sandbox). The metadata-service rows run the forged-metadata test of
test_security_and_tools.py instead.
Run one row with e.g. MFS_TEST_BACKEND=bubblewrap MFS_TEST_DATASTORE=s3 MFS_TEST_METADATA=local.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import BACKEND, Project

pytestmark = pytest.mark.integration

#: Lines from the launcher start with this (its `say`); only they can report a refusal.
LAUNCHER = "[sandbox]"
#: A launcher line with one of these says the relay did not accept something.
REFUSED = ("refuse", "dropped", "not listed", "unlisted", "rejected", "ignored")
#: A refusal line with one of these names the size bound that was hit.
BOUND = ("limit", "too large", "exceeds", "bound", "at most")
#: Peak RSS (KiB) any process of a run may reach while a 1 MB blob from the sandbox is checked.
MAX_LAUNCHER_RSS_KIB = 512 * 1024
#: Seconds the launcher may spend after the sandbox exits before it refuses an oversized staged file.
MAX_RELAY_SECONDS = 5.0

FLOW = "attack_flow.py"
WRAPPER = Path(__file__).parent / "attack_wrapper.py"
NOT_A_REAL_SANDBOX = (
    "the remote backends' emulators (Daytona, E2B, boxlite REST) run sandboxes as plain local processes on the launcher's host (no "
    "namespaces); a real cloud sandbox is a remote container or VM whose /proc/sys and keyrings are not the "
    "launcher's"
)


class _Bomb:
    """Pickles exactly as attack_flow.Bomb does (os.system with one argument)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bomb_sha(marker: Path) -> str:
    return hashlib.sha1(pickle.dumps(_Bomb(str(marker)), protocol=4)).hexdigest()


def host_marker(tmp_path: Path) -> Path:
    """A path only the launcher's host can create (tmp_path is not mounted into any sandbox)."""
    directory = tmp_path / "host-only"
    directory.mkdir(exist_ok=True)
    return directory / "PWNED"


def run_flow(project: Project, *args: str, wrapper: tuple[str, ...] = (), timeout: float = 600, **env: str):
    """`python attack_flow.py run ...` in the project, optionally through tests/attack_wrapper.py."""
    if not (project.root / FLOW).exists():
        project.flow(FLOW)
    command = project.command(FLOW, "run", *args)
    if wrapper:
        command = [sys.executable, str(WRAPPER), *wrapper, "--", *command]
    return project.run_argv(command, check=False, timeout=timeout, **env)


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def refusal_lines(output: str, also: tuple[str, ...] = ()) -> list[str]:
    lines = [
        line
        for line in output.splitlines()
        if LAUNCHER in line and any(word in line.split(LAUNCHER, 1)[1].lower() for word in REFUSED)
    ]
    if also:
        lines = [line for line in lines if any(word in line.lower() for word in also)]
    return lines


def tail(output: str, lines: int = 40) -> str:
    return "\n".join(output.splitlines()[-lines:])


def blob_key(sha: str) -> str:
    return f"AttackFlow/data/{sha[:2]}/{sha}"


def datastore_has(project: Project, rel: str) -> bool:
    """Whether `rel` (relative to the datastore root) exists in the project's real datastore."""
    if project.datastore == "local":
        return (project.root / ".metaflow" / rel).exists()
    from botocore.exceptions import ClientError

    bucket, _, prefix = project.env["METAFLOW_DATASTORE_SYSROOT_S3"][len("s3://") :].partition("/")
    try:
        project.s3.client().head_object(Bucket=bucket, Key=f"{prefix}/{rel}")  # type: ignore[attr-defined]
        return True
    except ClientError:
        return False


#: Client helper for queries: an artifact by name, found by iterating the task (metaflow-local-service
#: answers task[name] with a KeyError for artifacts that iteration lists).
ARTIFACT_HELPER = "def artifact(task, name):\n    return next(a for a in task if a.id == name)\n"


def query(project: Project, code: str) -> dict:
    """Client code in a fresh interpreter with an empty client cache (Metaflow's default cache,
    /tmp/metaflow_client, would serve blobs as they were first read); any exception is reported as
    result["error"], not raised."""
    body = "\n".join("    " + line for line in code.strip().splitlines())
    script = f"result = {{}}\n{ARTIFACT_HELPER}try:\n{body}\nexcept Exception as error:\n    result['error'] = repr(error)[:2000]\n"
    saved = dict(project.env)
    project.env["METAFLOW_CLIENT_CACHE_PATH"] = str(
        project.root.parent / f"client-cache-{uuid.uuid4().hex[:8]}"
    )
    try:
        return project.query(script)  # type: ignore[return-value]
    finally:
        project.env.clear()
        project.env.update(saved)


# -- 1. unchecked blobs reach the datastore, then run code on the launcher ------------------------------


@pytest.mark.parametrize("variant", ["unlisted-blob", "orchestrator", "retry-blob"])
def test_unlisted_blob_never_reaches_the_datastore_or_runs_on_the_launcher(
    project: Project, tmp_path: Path, variant: str
):
    """unlisted-blob: a step stages a hash-correct malicious blob that its data.json does not list; the next
    sandboxed step sets an artifact that pickles to the same bytes (deduplicated, so never staged or
    checked); the plain end step unpickles it on the launcher.
    orchestrator: the same object stored as `second`'s `_foreach_stack`: the runtime itself unpickles it.
    retry-blob: attempt 0 writes the blob and dies before data.json exists; attempt 1 reuses it."""
    marker = host_marker(tmp_path)
    planted = bomb_sha(marker)
    result = run_flow(project, "--attack", variant, "--marker", str(marker))
    output = output_of(result)
    problems = []
    if marker.exists():
        problems.append(f"the planted pickle ran on the launcher: {marker} was created")
    if datastore_has(project, blob_key(planted)):
        problems.append(f"the unlisted blob {planted} reached the datastore unchecked")
    if not refusal_lines(output):
        problems.append(f"no line says the unlisted blob was refused or dropped (exit {result.returncode})")
    assert not problems, "; ".join(problems) + "\n" + tail(output)


# -- 2. forged artifact records -----------------------------------------------------------------------


def test_forged_artifact_record_is_refused(project: Project, tmp_path: Path):
    """The step pre-writes `_meta/0_artifact_greeting.json` pointing at a planted blob; Metaflow's own record
    is then skipped and data.json stays clean; the client (Task['greeting'].data) unpickles the planted blob."""
    marker = host_marker(tmp_path)
    planted = bomb_sha(marker)
    result = run_flow(project, "--attack", "forged-record", "--marker", str(marker))
    output = output_of(result)
    seen = query(
        project,
        """
t = Flow('AttackFlow').latest_run['first'].task
result['sha'] = artifact(t, 'greeting').sha
result['value'] = artifact(t, 'greeting').data
""",
    )
    problems = []
    if marker.exists():
        problems.append(f"a client reading the artifact ran the planted pickle: {marker} was created")
    if seen.get("sha") == planted:
        problems.append(f"the task's artifact record for 'greeting' points at the planted blob {planted}")
    if "value" in seen and seen["value"] != "hello":
        problems.append(f"greeting loads as {seen['value']!r}, not the step's 'hello'")
    if datastore_has(project, blob_key(planted)):
        problems.append(f"the planted blob {planted} reached the datastore")
    if not refusal_lines(output):
        problems.append(f"no line says the forged record was refused (exit {result.returncode})")
    assert not problems, "; ".join(problems) + f"\nclient saw: {seen}\n" + tail(output)


# -- 3. other runs' data corrupted through a staged sidecar -------------------------------------------


def test_earlier_runs_artifacts_still_load_after_a_sandbox_restages_their_blob(project: Project):
    """Run 1 stores an artifact. Run 2's sandboxed step stages that blob again with metadata saying
    {"cas_raw": true} (local: the `<sha>_meta` sidecar; S3: the object's metadata): the relay skips (local)
    or overwrites (S3) the existing blob but applies the new metadata."""
    run_flow(project, "--attack", "victim").check_returncode()
    before = query(
        project,
        """
run = Flow('AttackFlow').latest_run
result['run'] = run.id
result['sha'] = artifact(run['start'].task, 'victim').sha
result['value'] = artifact(run['start'].task, 'victim').data
""",
    )
    assert "error" not in before, before
    result = run_flow(project, "--attack", "sidecar", "--target", before["sha"])
    output = output_of(result)
    after = query(
        project,
        f"""
result['value'] = artifact(Flow('AttackFlow')['{before["run"]}']['start'].task, 'victim').data
""",
    )
    problems = []
    if after.get("value") != before["value"]:
        problems.append(
            f"run {before['run']}'s artifact 'victim' (blob {before['sha']}) no longer loads: "
            f"{after.get('error') or after.get('value')}"
        )
    if not refusal_lines(output):
        problems.append(f"no line says the rewritten blob metadata was refused (exit {result.returncode})")
    assert not problems, "; ".join(problems) + "\n" + tail(output)


# -- 4. setuid-root files in the datastore ------------------------------------------------------------


def test_no_setuid_or_foreign_files_reach_the_datastore(project: Project):
    """The step chmods staged files (a listed blob, its sidecar, a task file) to 06777; the relay moved them
    with their mode and owner, leaving setuid-root, world-writable files in the datastore."""
    if project.datastore != "local":
        pytest.skip(
            "S3 objects carry no mode bits or owner: only the local staging tree can carry a setuid file"
        )
    result = run_flow(project, "--attack", "setuid")
    odd = []
    for path in sorted((project.root / ".metaflow").rglob("*")):
        info = path.lstat()
        bad = []
        if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            bad.append("setuid/setgid")
        if info.st_mode & stat.S_IWOTH and not path.is_symlink():
            bad.append("world-writable")
        if info.st_uid != os.getuid() or info.st_gid != os.getgid():
            bad.append(f"owned by {info.st_uid}:{info.st_gid}")
        if bad:
            odd.append(f"{path.relative_to(project.root)} {oct(info.st_mode)} ({', '.join(bad)})")
    assert odd == [], (
        "files with odd modes or owners in the datastore:\n"
        + "\n".join(odd)
        + "\n"
        + tail(output_of(result), 15)
    )


# -- 5. host kernel settings writable ------------------------------------------------------------------


def test_sandbox_cannot_write_host_kernel_settings(project: Project):
    """From the sandbox, /proc/sys/vm/swappiness is opened for writing and given back the value just read
    (no host setting changes); /proc/sys/kernel/core_pattern is checked with access(W_OK)."""
    if BACKEND != "bubblewrap":
        pytest.skip(NOT_A_REAL_SANDBOX)
    result = run_flow(project, "--attack", "proc-sys")
    assert result.returncode == 0, tail(output_of(result))
    seen = query(
        project,
        """
t = Flow('AttackFlow').latest_run['first'].task
result['swappiness'] = artifact(t, 'swappiness_write').data
result['core_pattern'] = artifact(t, 'core_pattern_writable').data
""",
    )
    assert "error" not in seen, seen
    problems = []
    if seen["swappiness"] == "reached":
        problems.append("the sandbox wrote /proc/sys/vm/swappiness (a host kernel setting)")
    if seen["core_pattern"]:
        problems.append("/proc/sys/kernel/core_pattern is writable from the sandbox")
    assert not problems, "; ".join(problems)


# -- 6. the launcher's session keyring readable ------------------------------------------------------


def test_sandbox_cannot_read_the_launchers_session_keyring(project: Project):
    """The run starts in a fresh session keyring holding a "user" key (the canary); the sandboxed step
    reads /proc/keys and keyctl-reads the session keyring and each key in it."""
    if BACKEND != "bubblewrap":
        pytest.skip(NOT_A_REAL_SANDBOX)
    canary = "mfs-canary-" + uuid.uuid4().hex[:12]
    result = run_flow(project, "--attack", "keyring", "--canary", canary, wrapper=("--keyring", canary))
    assert result.returncode == 0, tail(output_of(result))
    seen = query(
        project,
        """
t = Flow('AttackFlow').latest_run['first'].task
result['seen'] = artifact(t, 'keyring_seen').data
result['notes'] = artifact(t, 'keyring_notes').data
""",
    )
    assert "error" not in seen, seen
    assert seen["seen"] == [], f"the sandbox saw the launcher's keyring canary: {seen}"


# -- 7. decompression bomb and unbounded hashing in the launcher -----------------------------------


def test_gzip_bomb_is_refused_without_inflating_it_in_the_launcher(project: Project, tmp_path: Path):
    """A memory=256 step lists an artifact whose ~1 MB gzip blob inflates to 1 GiB; the launcher's blob and
    artifact checks inflated all of it in memory. Peak RSS is that of the largest process of the run tree
    (RUSAGE_CHILDREN of a wrapper), so it covers every task's launcher."""
    maxrss = tmp_path / "maxrss"
    result = run_flow(project, "--attack", "gzip-bomb", wrapper=("--maxrss-file", str(maxrss)))
    output = output_of(result)
    peak_kib = int(maxrss.read_text())
    problems = []
    if peak_kib > MAX_LAUNCHER_RSS_KIB:
        problems.append(
            f"a process of the run reached {peak_kib // 1024} MiB RSS (bound {MAX_LAUNCHER_RSS_KIB // 1024} MiB) "
            "checking a 1 MB blob"
        )
    if result.returncode == 0:
        problems.append("the run succeeded: the 1 GiB artifact was accepted")
    if not refusal_lines(output, also=BOUND):
        problems.append("no refusal line names the size bound")
    assert not problems, "; ".join(problems) + "\n" + tail(output)


def test_oversized_staged_file_is_refused_without_hashing_it(project: Project):
    """An 8 GiB sparse file named like a blob in the local staging tree: the launcher hashed all of it. A
    blob data.json does not list is dropped unread, with a line saying so."""
    if project.datastore != "local":
        pytest.skip("a sparse file is a local-filesystem trick: an 8 GiB S3 object would have to be uploaded")
    result = run_flow(project, "--attack", "sparse", METAFLOW_SANDBOX_TIMINGS="1")
    output = output_of(result)
    after_sandbox = None
    for line in output.splitlines():
        if "timings:" in line and "destroy" in line:
            phases = [part.strip().rsplit(" ", 1) for part in line.split("timings:", 1)[1].split(",")]
            names = [name for name, _ in phases]
            seconds = [float(value.rstrip("s")) for _, value in phases]
            after_sandbox = sum(seconds[names.index("destroy") + 1 :])  # the relay and cleanup
    problems = []
    if after_sandbox is not None and after_sandbox > MAX_RELAY_SECONDS:
        problems.append(
            f"the launcher spent {after_sandbox:.1f}s on the staged file after the sandbox exited"
        )
    if not refusal_lines(output):
        problems.append(f"no line says the staged file was refused or dropped (exit {result.returncode})")
    assert not problems, "; ".join(problems) + "\n" + tail(output, 15)


# -- 8. trusted_types prefixes admit function gadgets -----------------------------------------------


def test_trusted_module_function_gadget_is_refused(project: Project, tmp_path: Path):
    """The step trusts "pydantic"; its hand-made pickle calls pydantic.v1.utils.import_string("os.system")
    and then the result: the validator allows every global under the prefix, functions included."""
    pytest.importorskip(
        "pydantic.v1.utils", reason="the gadget needs pydantic (v1 API) importable on the launcher"
    )
    marker = host_marker(tmp_path)
    result = run_flow(project, "--attack", "gadget", "--marker", str(marker))
    output = output_of(result)
    problems = []
    if marker.exists():
        problems.append(f"the gadget pickle ran os.system on the launcher: {marker} was created")
    if result.returncode == 0:
        problems.append("the run succeeded: the gadget artifact was accepted")
    if not refusal_lines(output):
        problems.append("no line says the artifact was refused")
    assert not problems, "; ".join(problems) + "\n" + tail(output)

"""Hardening of bubblewrap sandboxes, asserted from inside real sandboxes: the seccomp filter, the process
limit, the bootstrap out of the step's reach, no privileges, and no writable path shared with the host."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from metaflow_sandbox_bubblewrap import BubblewrapSandbox
from metaflow_sandbox_bubblewrap.command import build_bwrap_argv
from metaflow_sandbox_bubblewrap.host import detect_host_system
from metaflow_sandbox_bubblewrap.layout import NAMESPACED_USER
from metaflow_sandbox_bubblewrap.limits import MAX_PROCESSES
from metaflow_sandbox_bubblewrap.seccomp import DENIED, host_arch
from metaflow_sandbox_core import Mount, NetworkPolicy

CreateSandbox = Callable[..., BubblewrapSandbox]
Shell = Callable[..., tuple[int, str]]

#: The system Python (the host's /usr is what a sandbox sees; the test's own venv is not mounted).
PYTHON = "/usr/bin/python3"
BOOTSTRAP = (
    Path(__file__).resolve().parents[2]
    / "metaflow-sandbox-runtime"
    / "src"
    / "metaflow_sandbox_runtime"
    / "bootstrap.py"
)


def run_python(sandbox: BubblewrapSandbox, shell: Shell, code: str, timeout: float = 60) -> tuple[int, str]:
    if not os.path.exists(PYTHON):
        pytest.skip(f"{PYTHON} is missing: the sandbox sees the host's /usr only")
    sandbox.upload(textwrap.dedent(code).encode(), "/sandbox/probe.py")
    return shell(sandbox, f"{PYTHON} -I /sandbox/probe.py 2>&1", timeout=timeout)


SYSCALL = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
    return errno.errorcode.get(ctypes.get_errno(), "OK") if result == -1 else "OK"
"""


def test_seccomp_denies_what_a_step_never_needs(create_bubblewrap: CreateSandbox, shell: Shell) -> None:
    """Every denied call answers EPERM (called with harmless arguments); namespace flags of unshare/clone are
    refused while plain forks work; clone3 answers ENOSYS; the process is under a seccomp filter."""
    arch = host_arch()
    if arch is None:
        pytest.skip("no seccomp filter is defined for this architecture")
    numbers = {name: arch.numbers[name] for name in DENIED if name in arch.numbers}
    code, output = run_python(
        create_bubblewrap(),
        shell,
        SYSCALL
        + f"""
numbers = {numbers!r}
n = {arch.numbers!r}
seen = {{name: call(nr, 0, 0, 0, 0, 0) for name, nr in numbers.items()}}
seen["unshare(CLONE_NEWUSER)"] = call(n["unshare"], 0x10000000)
seen["unshare(CLONE_NEWNET)"] = call(n["unshare"], 0x40000000)
seen["unshare(CLONE_FILES)"] = call(n["unshare"], 0x400)
seen["clone(CLONE_NEWUSER)"] = call(n["clone"], 0x10000000 | 17, 0, 0, 0, 0)
seen["clone3"] = call(n["clone3"], 0, 0)
seen["personality(query)"] = call(n["personality"], 0xFFFFFFFF)
seen["personality(READ_IMPLIES_EXEC)"] = call(n["personality"], 0x0400000)
seen["ioctl(TIOCSTI)"] = call(n["ioctl"], 0, 0x5412, 0)
status = open("/proc/self/status").read()
seen["Seccomp"] = status.split("Seccomp:")[1].split()[0]
print(json.dumps(seen))
""",
    )
    assert code == 0, output
    seen = json.loads(output.splitlines()[-1])
    expected = {name: "EPERM" for name in numbers}
    expected |= {
        "unshare(CLONE_NEWUSER)": "EPERM",
        "unshare(CLONE_NEWNET)": "EPERM",
        "unshare(CLONE_FILES)": "OK",
        "clone(CLONE_NEWUSER)": "EPERM",
        "clone3": "ENOSYS",
        "personality(query)": "OK",
        "personality(READ_IMPLIES_EXEC)": "EPERM",
        "ioctl(TIOCSTI)": "EPERM",
        "Seccomp": "2",
    }
    assert seen == expected


def test_ordinary_workloads_run_under_the_filter(create_bubblewrap: CreateSandbox, shell: Shell) -> None:
    code, output = run_python(
        create_bubblewrap(),
        shell,
        """
        import concurrent.futures, multiprocessing, os, subprocess, threading


        def main():
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                threads = sum(pool.map(lambda x: x, range(100)))
            with multiprocessing.get_context("fork").Pool(2) as pool:
                forked = sum(pool.map(abs, [-1, -2, -3]))
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                spawned = sum(pool.map(abs, [-4]))
            shell = subprocess.run(["sh", "-c", "echo $((6 * 7)) | cat"], capture_output=True, text=True).stdout.strip()
            pid = os.fork()
            if pid == 0:
                os._exit(7)
            print(threads, forked, spawned, shell, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))


        if __name__ == "__main__":
            main()
        """,
    )
    assert code == 0, output
    assert output.split() == ["4950", "6", "4", "42", "7"]


def test_step_cannot_reach_its_bootstrap(create_bubblewrap: CreateSandbox, shell: Shell) -> None:
    """The real bootstrap runs a step that tries to take over the bootstrap (its parent, same user): attach
    with ptrace, read its memory, open its stdout (the launcher's pipe) to forge launcher lines."""
    if not BOOTSTRAP.exists():
        pytest.skip(f"the runtime package is not beside this one ({BOOTSTRAP})")
    sandbox = create_bubblewrap()
    sandbox.upload(BOOTSTRAP.read_bytes(), "/sandbox/bootstrap.py")
    sandbox.upload(
        (
            SYSCALL
            + textwrap.dedent(
                """
                parent = os.getppid()
                seen = {"ptrace(ATTACH)": call(%d, 16, parent, 0, 0)}
                for what, mode in (("fd/1", "wb"), ("mem", "rb")):
                    try:
                        open("/proc/%%d/%%s" %% (parent, what), mode).close()
                        seen[what] = "OK"
                    except OSError as error:
                        seen[what] = errno.errorcode[error.errno]
                print(json.dumps(seen))
                """
                % host_arch().numbers["ptrace"]  # type: ignore[union-attr]
            )
        ).encode(),
        "/sandbox/step.py",
    )
    plan = {"version": 1, "package": {"dir": "/sandbox"}, "python": PYTHON, "argv": ["/sandbox/step.py"]}
    sandbox.upload(json.dumps(plan).encode(), "/sandbox/plan.json")
    code, output = shell(sandbox, f"{PYTHON} -I -S /sandbox/bootstrap.py /sandbox/plan.json")
    assert code == 0, output
    record = output.strip().splitlines()[-1]
    seen = json.loads(record[record.index("]") + 1 :])
    assert seen == {"ptrace(ATTACH)": "EPERM", "fd/1": "EACCES", "mem": "EACCES"}


def _tasks_of(uid: int) -> int:
    """Processes and threads of host uid `uid` (what RLIMIT_NPROC counts)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return count


def test_fork_bomb_is_contained(create_bubblewrap: CreateSandbox, shell: Shell) -> None:
    """A shell fork bomb runs for a few seconds: the sandbox's processes stay within the limit, the host
    starts processes meanwhile, and the step's output names the failure."""
    sandbox = create_bubblewrap()
    if not sandbox.user.drop_from_root:
        pytest.skip(f"processes: {sandbox.limits.enforcement['processes']}")
    result: dict[str, tuple[int, str]] = {}
    bomb = threading.Thread(
        target=lambda: result.update(
            done=shell(sandbox, "bomb() { bomb | bomb & }; bomb; sleep 4", timeout=40)
        )
    )
    bomb.start()
    peak, host_ok = 0, []
    while bomb.is_alive():
        peak = max(peak, _tasks_of(sandbox.user.uid))
        host_ok.append(subprocess.run(["true"]).returncode == 0)
        time.sleep(0.2)
    bomb.join()
    _, output = result["done"]
    assert 100 < peak <= MAX_PROCESSES
    assert host_ok and all(host_ok)
    assert "Resource temporarily unavailable" in output or "Cannot fork" in output, output[-500:]
    assert str(MAX_PROCESSES) in sandbox.limits.enforcement["processes"]


def _status_fields(output: str) -> dict[str, str]:
    fields = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    return {key: value.strip() for key, value in fields.items()}


PRIVILEGES = "grep -E '^(NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status"
NO_PRIVILEGES = {
    "NoNewPrivs": "1",
    **{f"Cap{kind}": "0000000000000000" for kind in ("Inh", "Prm", "Eff", "Bnd", "Amb")},
}


def test_no_new_privs_and_no_capabilities(create_bubblewrap: CreateSandbox, shell: Shell) -> None:
    code, output = shell(create_bubblewrap(), PRIVILEGES)
    assert code == 0, output
    assert _status_fields(output) == NO_PRIVILEGES


def test_no_new_privs_and_no_capabilities_under_an_unprivileged_launcher(tmp_path: Path) -> None:
    """The unprivileged launcher's command line (a user namespace), run by an unprivileged user."""
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    if os.geteuid() != 0 or bwrap is None or setpriv is None:
        pytest.skip("needs root (to become an unprivileged user for the launcher), bwrap and setpriv")
    argv = build_bwrap_argv(
        bwrap,
        host=detect_host_system(),
        network=NetworkPolicy.NONE,
        binds=(),
        argv=["sh", "-c", PRIVILEGES],
        cwd="/",
        user=NAMESPACED_USER,
    )
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--", *argv]
    done = subprocess.run(as_nobody, capture_output=True, text=True, timeout=30, cwd="/")
    if done.returncode != 0 and "namespace" in done.stderr.lower():
        pytest.skip(f"unprivileged user namespaces are unavailable here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert _status_fields(done.stdout) == NO_PRIVILEGES, shlex.join(argv)


#: Host device nodes bwrap binds into its fresh /dev (writable, but they are devices, not shared files).
DEVICES = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}
#: Filesystems a sandbox gets fresh, not shared with the host.
PRIVATE_FS = {"tmpfs", "proc", "mqueue", "devpts"}


def test_only_the_sandboxs_own_directories_and_writable_mounts_are_writable(
    create_bubblewrap: CreateSandbox, shell: Shell, tmp_path: Path
) -> None:
    """Every writable mount in /proc/self/mountinfo is a private filesystem, a device node, or a bind of the
    sandbox's own host directory or of a writable mount it was given (the extension's task staging)."""
    staging = tmp_path / "staging"
    staging.mkdir()
    (tmp_path / "readonly").mkdir()
    sandbox = create_bubblewrap(
        mounts=[
            Mount(str(staging), "/staging", read_only=False),
            Mount(str(tmp_path / "readonly"), "/data", read_only=True),
        ]
    )
    code, output = shell(sandbox, "cat /proc/self/mountinfo")
    assert code == 0, output
    shared = []
    for line in output.splitlines():
        fields = line.split()
        root, mount_point, options = fields[3], fields[4], fields[5].split(",")
        fs_type = fields[fields.index("-") + 1]
        if "rw" not in options or fs_type in PRIVATE_FS or mount_point in DEVICES:
            continue
        inside_own = root.startswith(sandbox.layout.host_dir.rstrip("/") + "/")
        if not (inside_own or root == str(staging)):
            shared.append(f"{mount_point} (host {root}, {fs_type})")
    assert shared == [], "writable host paths in the sandbox: " + "; ".join(shared)
    assert any(line.split()[4] == "/staging" for line in output.splitlines())

"""What a sandbox cannot see or reach, against real bwrap."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metaflow_sandbox_bubblewrap import BubblewrapSandbox
from metaflow_sandbox_core import Mount, NetworkPolicy

CreateSandbox = Callable[..., BubblewrapSandbox]
Shell = Callable[..., tuple[int, str]]


def test_host_files_outside_the_binds_are_invisible(
    create_bubblewrap: CreateSandbox, shell: Shell, tmp_path: Path
) -> None:
    fake_home = tmp_path / "home" / "alice"
    fake_home.mkdir(parents=True)
    secret = fake_home / ".aws-credentials"
    secret.write_text("aws_secret_access_key=host-only\n")
    code, output = shell(
        create_bubblewrap(),
        f"test -e '{secret}' && echo SECRET-VISIBLE; test -e '{fake_home}' && echo HOME-VISIBLE; "
        "ls -A /root 2>&1; ls /home; echo end",
    )
    assert code == 0
    assert "VISIBLE" not in output
    assert "No such file or directory" in output  # /root does not exist inside
    assert output.splitlines()[-2:] == ["sandbox", "end"], output  # only the sandbox's own home


def test_etc_shadow_is_unreadable_and_passwd_is_synthesized(
    create_bubblewrap: CreateSandbox, shell: Shell
) -> None:
    _, output = shell(
        create_bubblewrap(), "cat /etc/shadow; echo rc=$?; cut -d: -f1 /etc/passwd | tr '\\n' ' '"
    )
    assert "rc=0" not in output
    assert output.splitlines()[-1] == "root sandbox nobody "


def test_runs_as_unprivileged_user_and_files_belong_to_the_caller(
    create_bubblewrap: CreateSandbox, shell: Shell
) -> None:
    sandbox = create_bubblewrap()
    _, output = shell(
        sandbox, "id -u; id -g; echo made > /sandbox/made.txt; touch /usr/x 2>/dev/null || echo ro-usr"
    )
    user = sandbox.user
    assert output.split() == [str(user.uid), str(user.gid), "ro-usr"]
    host_file = Path(sandbox.layout.host_dir) / "work" / "made.txt"
    if os.geteuid() == 0:  # a root launcher's sandbox is an unprivileged host user of its own
        assert user.drop_from_root and user.uid >= 2_000_000_000
        assert host_file.stat().st_uid == user.uid
    else:  # a user namespace maps the sandbox user onto the launcher
        assert user.uid == 1000 and host_file.stat().st_uid == os.getuid()
    assert sandbox.download("/sandbox/made.txt") == b"made\n"


def test_sandbox_holds_no_privileges_even_when_the_launcher_is_root(
    create_bubblewrap: CreateSandbox, shell: Shell
) -> None:
    """No capabilities, no_new_privs, and the kernel's settings read-only (a root launcher's red-team finding:
    /proc/sys was writable, e.g. kernel.core_pattern)."""
    _, output = shell(
        create_bubblewrap(),
        "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status; "
        "v=$(cat /proc/sys/vm/swappiness); (echo $v > /proc/sys/vm/swappiness) 2>/dev/null && echo WROTE-SYSCTL; "
        "test -w /proc/sys/kernel/core_pattern && echo CORE-PATTERN-WRITABLE; "
        "grep ' /proc/sys ' /proc/self/mountinfo | grep -c ' ro,'",
    )
    fields = dict(line.split(":\t") for line in output.splitlines() if ":\t" in line)
    assert fields == {
        "CapEff": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapBnd": "0000000000000000",
        "NoNewPrivs": "1",
    }, output
    assert "WROTE-SYSCTL" not in output and "CORE-PATTERN-WRITABLE" not in output
    assert output.splitlines()[-1] == "1", output  # /proc/sys is a read-only mount


def test_shared_memory_is_private_and_writable(create_bubblewrap: CreateSandbox, shell: Shell) -> None:
    """multiprocessing's semaphores need a writable /dev/shm, whoever the sandbox user is."""
    code, output = shell(create_bubblewrap(), "touch /dev/shm/x && ls /dev/shm")
    assert (code, output) == (0, "x\n")


def test_the_launchers_session_keyring_is_out_of_reach(tmp_path: Path) -> None:
    """A key in the launcher's session keyring (Kerberos caches, keyctl tokens) is not visible inside."""
    script = tmp_path / "keyring_probe.py"
    script.write_text(
        textwrap.dedent(
            """
            import ctypes, platform
            from metaflow_sandbox_bubblewrap import BubblewrapBackend
            from metaflow_sandbox_bubblewrap.keyring import KEYCTL_SYSCALL
            from metaflow_sandbox_core import SandboxSpec

            libc = ctypes.CDLL(None, use_errno=True)
            keyctl = KEYCTL_SYSCALL[platform.machine()]
            add_key = {"x86_64": 248, "aarch64": 217, "riscv64": 217}[platform.machine()]
            assert libc.syscall(keyctl, 1, None) > 0  # this process: a new session keyring
            assert libc.syscall(add_key, b"user", b"mfsb-canary", b"canary-payload", 14, ctypes.c_long(-3)) > 0
            assert "mfsb-canary" in open("/proc/keys").read()
            sandbox = BubblewrapBackend().create(SandboxSpec())
            try:
                out = []
                sandbox.run(["sh", "-c", "cat /proc/keys; echo end"], on_output=lambda s, line: out.append(line))
                print(b"".join(out).decode())
            finally:
                sandbox.destroy()
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "end" in result.stdout and "mfsb-canary" not in result.stdout, result.stdout


def test_root_filesystem_is_read_only_outside_private_dirs(
    create_bubblewrap: CreateSandbox, shell: Shell
) -> None:
    _, output = shell(
        create_bubblewrap(),
        "for d in / /etc /usr/lib; do touch $d/x 2>/dev/null && echo wrote $d; done; "
        "for d in /tmp /home/sandbox /sandbox; do touch $d/x && echo ok $d; done",
    )
    assert output.split("\n")[:-1] == ["ok /tmp", "ok /home/sandbox", "ok /sandbox"]


def test_processes_of_the_host_are_invisible(create_bubblewrap: CreateSandbox, shell: Shell) -> None:
    code, output = shell(create_bubblewrap(), "ls /proc | grep -c '^[0-9]'")
    assert code == 0
    assert int(output) <= 4  # bwrap's init, sh, ls, grep


@pytest.fixture
def tcp_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers each connection with 'hello'; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            with connection:
                connection.sendall(b"hello\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash (for /dev/tcp) on the host")
@pytest.mark.parametrize(("network", "reachable"), [(NetworkPolicy.NONE, False), (NetworkPolicy.FULL, True)])
def test_network_policy(
    create_bubblewrap: CreateSandbox, shell: Shell, tcp_server: int, network: NetworkPolicy, reachable: bool
) -> None:
    sandbox = create_bubblewrap(network=network)
    code, output = shell(sandbox, f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{tcp_server} && head -n1 <&3'")
    assert (code == 0 and output == "hello\n") is reachable, output


def test_mounts_are_bound_read_only_or_writable(
    create_bubblewrap: CreateSandbox, shell: Shell, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.txt").write_text("input\n")
    (tmp_path / "out").mkdir()
    sandbox = create_bubblewrap(
        mounts=(
            Mount(str(tmp_path / "in"), "/data/in"),
            Mount(str(tmp_path / "out"), "/data/out", read_only=False),
        )
    )
    code, output = shell(
        sandbox,
        "cat /data/in/data.txt; touch /data/in/x 2>/dev/null || echo ro; echo result > /data/out/r.txt",
    )
    assert (code, output) == (0, "input\nro\n")
    assert (tmp_path / "out" / "r.txt").read_text() == "result\n"
    assert sandbox.download("/data/in/data.txt") == b"input\n"

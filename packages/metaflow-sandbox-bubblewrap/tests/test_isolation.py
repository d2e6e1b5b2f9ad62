"""What a sandbox cannot see or reach, against real bwrap."""

from __future__ import annotations

import os
import shutil
import socket
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
    assert output.split() == ["1000", "1000", "ro-usr"]
    host_file = Path(sandbox.layout.host_dir) / "work" / "made.txt"
    assert host_file.stat().st_uid == os.getuid()
    assert sandbox.download("/sandbox/made.txt") == b"made\n"


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

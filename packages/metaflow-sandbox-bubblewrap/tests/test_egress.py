"""Filtered egress (`network="datastore"` and allow-lists) against real bwrap, a real proxy and real servers
on 127.0.0.1 standing in for the datastore and for "the internet" (no traffic leaves this machine)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from metaflow_sandbox_bubblewrap import BubblewrapSandbox
from metaflow_sandbox_testing.local_web import hello_servers

CreateSandbox = Callable[..., BubblewrapSandbox]
Shell = Callable[..., "tuple[int, str]"]

#: Run inside with the host's python (its /usr is bound): fetch a URL through whatever proxy the env names.
FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().strip())
except Exception as error:
    print("FAILED", type(error).__name__, getattr(error, "code", ""))
"""


@pytest.fixture
def http_servers() -> Iterator[tuple[int, ...]]:
    """Two plain HTTP servers on 127.0.0.1: the "datastore" and a loopback service that must stay unreachable."""
    with hello_servers(2) as ports:
        yield ports


def fetch(shell: Shell, sandbox: BubblewrapSandbox, url: str) -> str:
    sandbox.upload(FETCH.encode(), "/tmp/fetch.py")
    code, output = shell(sandbox, f"/usr/bin/python3 -I /tmp/fetch.py {url}")
    assert code == 0, output
    return output.strip()


def test_datastore_policy_reaches_the_datastore_endpoint_and_nothing_else(
    create_bubblewrap: CreateSandbox, shell: Shell, http_servers: tuple[int, int]
) -> None:
    datastore, other = http_servers
    sandbox = create_bubblewrap(network="datastore", network_allow=(f"127.0.0.1:{datastore}",))
    assert fetch(shell, sandbox, f"http://127.0.0.1:{datastore}/") == f"hello from {datastore}"
    assert fetch(shell, sandbox, f"http://127.0.0.1:{other}/") == "FAILED HTTPError 403"  # host loopback
    assert (
        fetch(shell, sandbox, f"http://localhost:{datastore}/") == "FAILED HTTPError 403"
    )  # not by that name
    assert any(f"127.0.0.1:{other}" in line for line in sandbox.egress.refused)  # type: ignore[union-attr]
    # The proxy's socket lives in the sandbox's own directory, so every way of destroying it removes it.
    directory = sandbox.egress.directory  # type: ignore[union-attr]
    assert directory.startswith(sandbox.layout.host_dir + "/")
    sandbox.destroy()
    assert not os.path.exists(directory)


PROBE = """
import socket, sys
port = int(sys.argv[1])
for what, call in [
    ("tcp", lambda: socket.create_connection(("127.0.0.1", port), timeout=3)),
    ("internet", lambda: socket.create_connection(("1.1.1.1", 53), timeout=3)),
    ("dns", lambda: socket.getaddrinfo("example.com", 443)),
    ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("1.1.1.1", 53))),
]:
    try:
        call()
        print(what, "REACHED")
    except OSError:
        print(what, "blocked")
"""

TUNNEL = """
import socket, sys
for port in sys.argv[1:]:
    s = socket.create_connection(("127.0.0.1", 3128), timeout=5)
    s.sendall(("CONNECT 127.0.0.1:%s HTTP/1.1\\r\\n\\r\\n" % port).encode())
    print(port, s.recv(100).split(b" ")[1].decode())
"""


def test_no_direct_route_dns_or_udp_inside(
    create_bubblewrap: CreateSandbox, shell: Shell, http_servers: tuple[int, int]
) -> None:
    datastore, _ = http_servers
    sandbox = create_bubblewrap(network="datastore", network_allow=(f"127.0.0.1:{datastore}",))
    sandbox.upload(PROBE.encode(), "/tmp/probe.py")
    code, output = shell(sandbox, f"/usr/bin/python3 -I /tmp/probe.py {datastore}")
    assert code == 0, output
    assert output.split() == ["tcp", "blocked", "internet", "blocked", "dns", "blocked", "udp", "blocked"], (
        output
    )


def test_allow_list_reaches_the_allowed_host_and_not_another(
    create_bubblewrap: CreateSandbox, shell: Shell, http_servers: tuple[int, int]
) -> None:
    allowed, refused = http_servers
    sandbox = create_bubblewrap(network="datastore", egress_allow=("localhost:%d" % allowed,))
    assert fetch(shell, sandbox, f"http://localhost:{allowed}/") == f"hello from {allowed}"
    assert fetch(shell, sandbox, f"http://localhost:{refused}/") == "FAILED HTTPError 403"
    assert fetch(shell, sandbox, f"http://127.0.0.1:{allowed}/") == "FAILED HTTPError 403"


def test_connect_tunnels_only_to_allowed_destinations(
    create_bubblewrap: CreateSandbox, shell: Shell, http_servers: tuple[int, int]
) -> None:
    allowed, refused = http_servers
    sandbox = create_bubblewrap(network="datastore", network_allow=(f"127.0.0.1:{allowed}",))
    sandbox.upload(TUNNEL.encode(), "/tmp/tunnel.py")
    code, output = shell(sandbox, f"/usr/bin/python3 -I /tmp/tunnel.py {allowed} {refused}")
    assert code == 0, output
    assert output.split() == [str(allowed), "200", str(refused), "403"], output

"""Filtered egress (`network="datastore"` and allow-lists) against real bwrap, a real proxy and real servers
on 127.0.0.1 standing in for the datastore and for "the internet" (no traffic leaves this machine)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from metaflow_sandbox_bubblewrap import BubblewrapSandbox
from metaflow_sandbox_bubblewrap.egress_proxy import EgressRules, Refused
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


def _resolver(addresses: dict[str, str]):
    def resolve(host: str, port: int, type: int = 0) -> list[tuple]:
        if host not in addresses:
            raise socket.gaierror("unknown name")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addresses[host], port))]

    return resolve


def test_rules_check_the_resolved_address_and_never_reach_loopback_or_the_lan_through_a_wildcard() -> None:
    rules = EgressRules(
        ["*.example.com", "api.example.org:443", "10.0.0.0/8"],
        resolve=_resolver(
            {
                "a.example.com": "93.184.0.1",
                "evil.example.com": "127.0.0.1",
                "meta.example.com": "169.254.169.254",
                "api.example.org": "10.1.1.1",
                "lan.example.com": "192.168.1.20",
            }
        ),
    )
    assert rules.allowed("a.example.com", 8080) == ["93.184.0.1"]
    assert rules.allowed("api.example.org", 443) == ["10.1.1.1"]
    assert rules.allowed("10.2.3.4", 22) == ["10.2.3.4"]
    for host, port in [
        ("evil.example.com", 80),
        ("meta.example.com", 80),
        ("lan.example.com", 80),  # a wildcard name never leads into the LAN
        ("api.example.org", 80),
        ("example.com", 443),
        ("11.0.0.1", 22),
        ("169.254.169.254", 80),
        ("nowhere.example.net", 1),
    ]:
        with pytest.raises(Refused):
            rules.allowed(host, port)


def test_plain_http_is_sent_in_origin_form_without_proxy_headers(tmp_path) -> None:
    """The proxy alone (no bwrap): what the origin server receives for an absolute-form request."""
    from metaflow_sandbox_bubblewrap.egress_proxy import EgressProxy

    upstream = socket.create_server(("127.0.0.1", 0))
    port = upstream.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        connection, _ = upstream.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(4096)
            received.append(data)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    proxy = EgressProxy(str(tmp_path / "p.sock"), EgressRules([f"127.0.0.1:{port}"]))
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(proxy.socket_path)
        client.sendall(
            f"GET http://127.0.0.1:{port}/a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Proxy-Authorization: Basic eA==\r\nConnection: keep-alive\r\n\r\n".encode()
        )
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
        assert answer.endswith(b"\r\n\r\nok")
        head = received[0].decode()
        assert head.startswith("GET /a?b=1 HTTP/1.1\r\n") and "Connection: close" in head
        assert "Proxy-Authorization" not in head and "keep-alive" not in head
    finally:
        proxy.close()
        upstream.close()

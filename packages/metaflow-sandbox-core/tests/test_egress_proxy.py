"""The filtering egress proxy and its rules on their own (no sandbox): what is allowed by name and by resolved
address, and what an origin server receives. End to end behind bwrap: packages/metaflow-sandbox-bubblewrap/tests/
test_egress.py and the emulators' tests in packages/metaflow-sandbox-testing/tests."""

from __future__ import annotations

import socket
import threading

import pytest

from metaflow_sandbox_core.egress_proxy import EgressProxy, EgressRules, Refused


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

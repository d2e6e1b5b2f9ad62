"""`EgressProxy`: the filtering HTTP proxy behind a sandbox whose egress is an allow-list (runs on the host).

The sandbox has an empty network namespace (loopback only). Its one way out is a unix socket, reachable inside,
on which this proxy listens; a forwarder inside (`egress_forwarder.py`) relays 127.0.0.1:3128 to that socket
and the sandbox's `HTTP(S)_PROXY` point there. Used by bubblewrap (`network="datastore"`) and by the test
kit's provider emulators (the allow-list a provider was sent). The proxy serves `CONNECT host:port` (TLS, any TCP) and
absolute-form plain HTTP requests (one per connection), and nothing else:

- by name: the CONNECT target or the request URL's host must match an allow-list entry (`Destination`);
- by address: the proxy resolves the name itself (the sandbox has no DNS) and connects to an address it
  checked, never re-resolving. Loopback, link-local, unspecified and multicast addresses are reached only
  when an entry names them as an IP or CIDR (a local datastore endpoint such as `127.0.0.1:9000`) or the name
  is an exact `localhost` entry; private addresses (RFC 1918, ULA) only through an exact name or an IP/CIDR
  entry. A name allowed by a wildcard never reaches any of them.
Not looked at: what flows inside an allowed CONNECT tunnel (no TLS interception, so SNI is not compared with
the CONNECT host), and the `Host` header of a plain request beyond its URL.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

from .egress import Destination, EgressKind, IPAddress, ip_or_none, parse_destination

#: Longest request head (request line and headers) the proxy reads.
MAX_HEAD = 64 * 1024
CONNECT_TIMEOUT = 10.0
#: Connections one sandbox may have open through the proxy at once (each is a thread in the launcher).
MAX_CONNECTIONS = 128
#: How long a tunnel may stay silent in both directions before the proxy closes it.
IDLE_TIMEOUT = 600.0


class Refused(Exception):
    """A destination the allow-list does not cover; the message says why (sent back as a 403)."""


def _special(address: IPAddress) -> bool:
    return address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast


class EgressRules:
    """The allow-list of one sandbox: `allowed(host, port)` → the addresses it may connect to, or `Refused`."""

    def __init__(self, entries: Iterable[str], resolve=socket.getaddrinfo):
        self.destinations: tuple[Destination, ...] = tuple(parse_destination(e) for e in entries)
        self._resolve = resolve

    def allowed(self, host: str, port: int) -> list[str]:
        host = host.lower().strip("[]").rstrip(".")
        literal = ip_or_none(host)
        if literal is not None:
            if any(d.matches_address(literal, port) for d in self.destinations):
                return [str(literal)]
            raise Refused(f"{host}:{port} is not on the sandbox's allow-list")
        matched = [d for d in self.destinations if d.network is None and d.matches_name(host, port)]
        if not matched:
            raise Refused(f"{host}:{port} is not on the sandbox's allow-list")
        exact = [d for d in matched if d.kind is not EgressKind.WILDCARD]
        exact_localhost = any(d.host == "localhost" for d in exact)
        try:
            infos = self._resolve(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise Refused(f"{host} does not resolve ({error})")
        addresses: list[str] = []
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            named = any(d.matches_address(address, port) for d in self.destinations)
            if _special(address) and not exact_localhost and not named:
                continue
            if address.is_private and not (exact or named):
                continue  # a wildcard name answered with a private address (DNS rebinding into the LAN)
            if str(address) not in addresses:
                addresses.append(str(address))
        if addresses:
            return addresses
        raise Refused(
            f"{host} resolves only to host-local or private addresses, which the allow-list does not name"
        )


class EgressProxy:
    """Listens on `socket_path` until `close()`; a thread per connection. `refused` records what it refused."""

    def __init__(self, socket_path: str, rules: EgressRules):
        self.socket_path = socket_path
        self.rules = rules
        self.refused: list[str] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(socket_path)
        os.chmod(socket_path, 0o666)  # the directory (the sandbox user's, 0700) guards it
        self._server.listen(64)
        self._closed = False
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread = threading.Thread(target=self._accept, name="egress-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                self.refused.append(f"more than {MAX_CONNECTIONS} connections at once")
                _answer(
                    client, 503, f"metaflow-sandbox egress: more than {MAX_CONNECTIONS} connections at once"
                )
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), name="egress-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            client.settimeout(CONNECT_TIMEOUT)
            head, rest = _read_head(client)
            method, target, version = _request_line(head)
            if method == "CONNECT":
                host, port = _split_host_port(target, default=None)
                upstream = self._open(client, host, port)
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
            else:
                url = urlsplit(target)
                if url.scheme != "http" or not url.hostname:
                    raise Refused(
                        f"{method} {target[:100]!r}: only CONNECT and absolute http:// requests pass"
                    )
                host, port = url.hostname, url.port or 80
                upstream = self._open(client, host, port)
                path = url.path or "/"
                if url.query:
                    path += "?" + url.query
                upstream.sendall(_origin_form(head, method, path, version) + rest)
            _pipe(client, upstream)
        except Refused as refusal:
            self.refused.append(str(refusal))
            _answer(client, 403, f"metaflow-sandbox egress: {refusal} (see the step's network= setting)")
        except (OSError, ValueError) as error:
            _answer(client, 502, f"metaflow-sandbox egress: {error}")
        finally:
            client.close()
            if upstream is not None:
                upstream.close()
            self._slots.release()

    def _open(self, client: socket.socket, host: str, port: int | None) -> socket.socket:
        if port is None:
            raise ValueError("CONNECT needs host:port")
        error: OSError | None = None
        for address in self.rules.allowed(host, port):  # checked addresses only, never resolved again
            try:
                return socket.create_connection((address, port), timeout=CONNECT_TIMEOUT)
            except OSError as failure:
                error = failure
        raise error or OSError(f"cannot connect to {host}:{port}")


def _read_head(client: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            raise ValueError("the client closed before a full request")
        data += chunk
        if len(data) > MAX_HEAD:
            raise ValueError("request head too long")
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def _request_line(head: bytes) -> tuple[str, str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        raise ValueError("malformed request line")
    return parts[0].upper(), parts[1], parts[2]


def _split_host_port(target: str, default: int | None) -> tuple[str, int | None]:
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = target.rpartition(":") if ":" in target else (target, "", "")
    if not port_text:
        return host, default
    if not port_text.isdigit():
        raise ValueError(f"bad port in {target!r}")
    return host, int(port_text)


def _origin_form(head: bytes, method: str, path: str, version: str) -> bytes:
    """The request for the origin server: origin-form request line, no proxy headers, one request only."""
    lines = head.split(b"\r\n")[1:]
    kept = [
        line for line in lines if not line.lower().startswith((b"proxy-", b"connection:", b"keep-alive:"))
    ]
    first = f"{method} {path} {version}".encode("latin-1")
    return b"\r\n".join([first, *kept, b"Connection: close"]) + b"\r\n\r\n"


def _answer(client: socket.socket, status: int, message: str) -> None:
    body = (message + "\n").encode()
    reason = {403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}[status]
    try:
        client.sendall(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + body
        )
    except OSError:
        pass


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both directions end (a half-close is passed on)."""
    a.settimeout(IDLE_TIMEOUT)
    b.settimeout(IDLE_TIMEOUT)

    def copy(source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                target.sendall(chunk)
        except OSError:
            pass
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    other = threading.Thread(target=copy, args=(b, a), daemon=True)
    other.start()
    copy(a, b)
    other.join()

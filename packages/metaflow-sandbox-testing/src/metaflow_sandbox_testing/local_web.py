"""Plain HTTP servers on the loopback (127.0.0.1, or another 127.x address for a host nothing names) that stand
in for "an allowed API", "a loopback service" or "the internet" in egress tests (no traffic leaves the machine). Each answers every GET with `hello from <its port>`."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        port = self.server.server_address[1]  # type: ignore[index]  # AF_INET: (host, port)
        body = f"hello from {port}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def hello_servers(count: int = 2, host: str = "127.0.0.1") -> Iterator[tuple[int, ...]]:
    """`count` servers, each on a free port of `host` (a loopback address); their ports; stopped on exit."""
    servers = [http.server.ThreadingHTTPServer((host, 0), _Hello) for _ in range(count)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tuple(int(server.server_address[1]) for server in servers)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


#: Run inside a sandbox as `python3 -I -c REACH_PROBE URL...`: prints one JSON object, per URL what a fetch
#: through the proxy variables gave (`ok <body>`, `http <code>`, `failed <error>`) and what a direct TCP
#: connection ignoring them gave (`reached` or the error's name).
REACH_PROBE = r"""
import json, socket, sys, urllib.error, urllib.request
from urllib.parse import urlsplit
seen = {}
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            fetched = "ok " + response.read().decode().strip()
    except urllib.error.HTTPError as error:
        fetched = "http %d" % error.code
    except (OSError, ValueError) as error:
        fetched = "failed " + type(error).__name__
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 80), timeout=5).close()
        direct = "reached"
    except OSError as error:
        direct = type(error).__name__
    seen[url] = [fetched, direct]
print(json.dumps(seen))
"""


class EgressTargets:
    """The three destinations of an emulator's egress test, served while the context is open: `by_name`
    (`localhost`), `by_ip` (`127.0.0.1`, another port) and `refused` (`127.0.0.2`, which no list names).
    `check` asserts what `REACH_PROBE` saw under the three policies every provider has: allow `localhost`
    and `127.0.0.1` (any port), block everything, and no policy (the host's network)."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> EgressTargets:
        self.api, self.other = self._stack.enter_context(hello_servers(2))
        (elsewhere,) = self._stack.enter_context(hello_servers(1, host="127.0.0.2"))
        self.by_name = f"http://localhost:{self.api}/"
        self.by_ip = f"http://127.0.0.1:{self.other}/"
        self.refused = f"http://127.0.0.2:{elsewhere}/"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def urls(self) -> list[str]:
        return [self.by_name, self.by_ip, self.refused]

    def check(self, filtered: dict, blocked: dict, full: dict) -> None:
        no_route = "ConnectionRefusedError"  # an empty network namespace: nothing listens on its loopback
        assert filtered == {
            self.by_name: [f"ok hello from {self.api}", no_route],
            self.by_ip: [f"ok hello from {self.other}", no_route],
            self.refused: ["http 403", no_route],
        }
        assert all(
            fetched.startswith("failed") and direct == no_route for fetched, direct in blocked.values()
        )
        assert full[self.by_name] == [f"ok hello from {self.api}", "reached"]
        assert full[self.by_ip][1] == full[self.refused][1] == "reached"

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

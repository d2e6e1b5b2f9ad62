"""Plain HTTP servers on 127.0.0.1 that stand in for "an allowed API", "a loopback service" or "the internet"
in egress tests (no traffic leaves the machine). Each answers every GET with `hello from <its port>`."""

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
def hello_servers(count: int = 2) -> Iterator[tuple[int, ...]]:
    """`count` servers, each on a free port of 127.0.0.1; their ports; stopped on exit."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello) for _ in range(count)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tuple(int(server.server_address[1]) for server in servers)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()

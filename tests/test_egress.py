"""Escape canaries for the network: what a sandboxed step reaches under the default policy and under an
allow-list. Plain HTTP servers on 127.0.0.1 stand in for the host's loopback services, for "the internet"
and for an allowed API: no traffic leaves this machine.

bubblewrap enforces the policy itself (an empty network namespace and the egress proxy), so its rows check
reachability. The Daytona, E2B and boxlite-REST emulators run sandboxes as local processes and enforce no
egress rules: their rows check that the run works with the policy (the datastore stays reachable) and skip
the reachability checks; what each provider is asked for is asserted in the backend packages' tests.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from .conftest import BACKEND, FLOWS, Project

pytestmark = pytest.mark.integration

ENFORCED_HERE = BACKEND == "bubblewrap"
NOT_ENFORCED = (
    f"the {BACKEND} emulator runs sandboxes as local processes and enforces no egress rules; the provider's "
    "request is checked in packages/metaflow-sandbox-{daytona,e2b,boxlite}/tests (allow lists, allowOut, allow_net)"
)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello {self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[tuple[int, int]]:
    """(an "allowed API", a loopback service / "the internet"): plain HTTP servers on 127.0.0.1."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers[0].server_address[1], servers[1].server_address[1]
    for server in servers:
        server.shutdown()
        server.server_close()


def run_egress(project: Project, network: object, urls: list[str]) -> dict:
    source = (
        (FLOWS / "egress_flow.py").read_text().replace("\nNETWORK = None\n", f"\nNETWORK = {network!r}\n", 1)
    )
    (project.root / "egress_flow.py").write_text(source)
    project.run("egress_flow.py", "run", "--urls", ",".join(urls), timeout=300)
    return project.query(  # type: ignore[return-value]
        """
        task = Flow("EgressFlow").latest_run["untrusted"].task
        result = {name: task[name].data for name in ("fetched", "direct", "proxy")}
        """
    )


def test_default_policy_reaches_the_datastore_and_no_loopback_service(project: Project, web) -> None:
    _, service = web
    url = f"http://127.0.0.1:{service}/"
    seen = run_egress(project, None, [url])  # the run itself needs the datastore: it finished
    if not ENFORCED_HERE:
        pytest.skip(NOT_ENFORCED)
    assert not seen["fetched"][url].startswith("ok"), seen
    assert seen["direct"][url] != "reached", seen
    if project.datastore == "s3":  # filtered egress: the proxy refused it by name
        assert seen["fetched"][url].startswith("http 403") and seen["proxy"], seen


def test_allow_list_reaches_the_allowed_host_and_not_another(project: Project, web) -> None:
    api, other = web
    # bubblewrap filters by port too; the providers filter by host only (a port would be refused).
    entry = f"localhost:{api}" if ENFORCED_HERE else "localhost"
    allowed, refused = f"http://localhost:{api}/", f"http://localhost:{other}/"
    seen = run_egress(project, [entry], [allowed, refused])
    if not ENFORCED_HERE:
        pytest.skip(NOT_ENFORCED)
    assert seen["fetched"][allowed] == f"ok hello {api}", seen
    assert seen["fetched"][refused].startswith("http 403"), seen
    assert seen["direct"] == {allowed: "ConnectionRefusedError", refused: "ConnectionRefusedError"}, seen

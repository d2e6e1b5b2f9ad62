"""Escape canaries for the network: what a sandboxed step reaches under the default policy and under an
allow-list. Plain HTTP servers on 127.0.0.1 stand in for the host's loopback services, for "the internet"
and for an allowed API: no traffic leaves this machine.

bubblewrap enforces the policy itself (an empty network namespace and the egress proxy), so its rows check
reachability. The Daytona, E2B and boxlite-REST emulators run sandboxes as local processes and enforce no
egress rules: their rows check that the run works with the policy (the datastore stays reachable) and skip
the reachability checks; what each provider is asked for is asserted in the backend packages' tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metaflow_sandbox_testing.local_web import hello_servers

from .conftest import BACKEND, FLOWS, Project

pytestmark = pytest.mark.integration

ENFORCED_HERE = BACKEND == "bubblewrap"
NOT_ENFORCED = (
    f"the {BACKEND} emulator runs sandboxes as local processes and enforces no egress rules; the provider's "
    "request is checked in packages/metaflow-sandbox-{daytona,e2b,boxlite}/tests (allow lists, allowOut, allow_net)"
)


@pytest.fixture
def web() -> Iterator[tuple[int, ...]]:
    """(an "allowed API", a loopback service / "the internet"): plain HTTP servers on 127.0.0.1."""
    with hello_servers(2) as ports:
        yield ports


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
    assert seen["fetched"][allowed] == f"ok hello from {api}", seen
    assert seen["fetched"][refused].startswith("http 403"), seen
    assert seen["direct"] == {allowed: "ConnectionRefusedError", refused: "ConnectionRefusedError"}, seen

"""Escape canaries for the network: what a sandboxed step reaches under the default policy and under an
allow-list. Plain HTTP servers on the loopback stand in for the host's loopback services, for "the internet"
(127.0.0.2, which no list names) and for an allowed API: no traffic leaves this machine.

Every row checks reachability. bubblewrap enforces the policy itself (an empty network namespace and the egress
proxy). The Daytona, E2B and boxlite-REST emulators enforce the network policy the backend sent them on the wire
the same way (`metaflow_sandbox_testing.emulated_network`): these rows check our request, not the provider's
enforcement. Where the providers' semantics differ they are asserted as they are: they filter by host, not by
port, so every port of an allowed host (the datastore's included) is reachable.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metaflow_sandbox_testing.local_web import hello_servers

from .conftest import BACKEND, FLOWS, Project

pytestmark = pytest.mark.integration

#: bubblewrap filters by host and port; Daytona, E2B and boxlite by host only (a port in a list is refused).
BY_PORT = BACKEND == "bubblewrap"
NO_ROUTE = "ConnectionRefusedError"  # a direct connection in an empty network namespace


@pytest.fixture
def web() -> Iterator[tuple[int, ...]]:
    """(an "allowed API", a loopback service, "the internet"): plain HTTP servers, the last on 127.0.0.2."""
    with hello_servers(2) as ports, hello_servers(1, host="127.0.0.2") as (internet,):
        yield (*ports, internet)


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
    _, service, internet = web
    store_host = f"http://127.0.0.1:{service}/"  # a loopback service on the datastore's host (S3: 127.0.0.1)
    by_name = f"http://localhost:{service}/"
    beyond = f"http://127.0.0.2:{internet}/"
    # The run needs the datastore: that it finished shows the datastore was reached.
    seen = run_egress(project, None, [store_host, by_name, beyond])
    assert seen["direct"] == dict.fromkeys([store_host, by_name, beyond], NO_ROUTE), seen
    filtered = project.datastore == "s3"  # filtered egress (the local datastore's default is no network)
    refused = [by_name, beyond] + ([store_host] if BY_PORT else [])
    for url in refused:
        assert not seen["fetched"][url].startswith("ok"), seen
        if filtered:  # the proxy refused it by name or address
            assert seen["fetched"][url].startswith("http 403") and seen["proxy"], seen
    if not BY_PORT:  # the providers allow the datastore's host, so every port of it
        assert seen["fetched"][store_host] == f"ok hello from {service}", seen


def test_allow_list_reaches_the_allowed_host_and_not_another(project: Project, web) -> None:
    api, other, internet = web
    entry = f"localhost:{api}" if BY_PORT else "localhost"  # a port would be refused by the providers
    allowed, other_port, beyond = (
        f"http://localhost:{api}/",
        f"http://localhost:{other}/",
        f"http://127.0.0.2:{internet}/",
    )
    seen = run_egress(project, [entry], [allowed, other_port, beyond])
    assert seen["direct"] == dict.fromkeys([allowed, other_port, beyond], NO_ROUTE), seen
    assert seen["fetched"][allowed] == f"ok hello from {api}", seen
    assert seen["fetched"][beyond].startswith("http 403"), seen
    if BY_PORT:
        assert seen["fetched"][other_port].startswith("http 403"), seen
    else:  # by host only: every port of an allowed name
        assert seen["fetched"][other_port] == f"ok hello from {other}", seen

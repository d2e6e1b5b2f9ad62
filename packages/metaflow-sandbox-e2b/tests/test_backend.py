"""E2B-specific behaviour, through the real SDK against the emulator: what is asked of E2B, keys, errors,
lifetime, streams and sweeping."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from metaflow_sandbox_core import AuthError, ConfigError, SandboxError, SandboxSpec, UnavailableError
from metaflow_sandbox_e2b import E2BBackend
from metaflow_sandbox_e2b.plan import plan_create
from metaflow_sandbox_e2b.sandbox import wrapped


def lines_of(sandbox, argv, **kwargs):
    seen: list[tuple[str, bytes]] = []
    code = sandbox.run(argv, on_output=lambda stream, line: seen.append((stream, line)), **kwargs)
    return code, seen


# -- what is asked of E2B ------------------------------------------------------------------------------


def test_create_request_carries_template_labels_lease_and_egress(create, emulator):
    sandbox = create(
        image="my-team/py311",
        labels={"flow": "F"},
        network="datastore",
        network_allow=("s3.example.com:443", "127.0.0.1:9000"),
        timeout=600,
        options={"lease": 120},
    )
    (record,) = [s for s in emulator.live_sandboxes() if s["sandboxID"] == sandbox.id]
    request = record["request"]
    assert request["templateID"] == "my-team/py311"
    assert request["timeout"] == 120  # one lease, renewed while in use
    assert request["metadata"]["flow"] == "F"
    assert request["network"] == {"denyOut": ["0.0.0.0/0"], "allowOut": ["127.0.0.1", "s3.example.com"]}
    assert "allow_internet_access" not in request


def test_the_steps_allow_list_joins_the_datastore_hosts_in_allow_out(create, emulator):
    sandbox = create(
        network="datastore",
        network_allow=("127.0.0.1:9000",),
        egress_allow=("API.example.com", "*.example.org", "10.0.0.0/8"),
    )
    (record,) = [s for s in emulator.live_sandboxes() if s["sandboxID"] == sandbox.id]
    assert record["request"]["network"] == {
        "denyOut": ["0.0.0.0/0"],
        "allowOut": ["*.example.org", "10.0.0.0/8", "127.0.0.1", "api.example.com"],
    }


def test_a_port_in_the_allow_list_is_refused_before_anything_exists(emulator):
    before = len(emulator.live_sandboxes())
    with pytest.raises(ConfigError, match="e2b backend cannot enforce: it enforces only host, "):
        E2BBackend().create(SandboxSpec(network="datastore", egress_allow=("api.example.com:443",)))
    assert len(emulator.live_sandboxes()) == before


@pytest.mark.parametrize(
    ("network", "allowed"), [("none", False), ("full", True)], ids=["network-none", "network-full"]
)
def test_network_none_and_full(create, emulator, network, allowed):
    sandbox = create(network=network)
    (record,) = [s for s in emulator.live_sandboxes() if s["sandboxID"] == sandbox.id]
    assert record["request"]["allow_internet_access"] is allowed


@pytest.mark.parametrize("sizes", [{"cpu": 2}, {"memory_mb": 2048}, {"disk_mb": 10_000}, {"gpu": 1}])
def test_sizes_are_refused_naming_the_template_option(sizes):
    with pytest.raises(ConfigError, match=r"options=\{'template': 'name'\}"):
        plan_create(SandboxSpec(**sizes))


def test_bad_options_and_mounts_are_refused_before_anything_exists():
    with pytest.raises(ConfigError, match="give one of them"):
        plan_create(SandboxSpec(image="a", options={"template": "b"}))
    with pytest.raises(ConfigError, match=r"options\['lease'\]"):
        plan_create(SandboxSpec(options={"lease": 0}))
    from metaflow_sandbox_core import Mount

    with pytest.raises(ConfigError, match="--datastore=s3"):
        plan_create(SandboxSpec(mounts=(Mount("/tmp", "/data"),)))


def test_lifetime_is_the_steps_limit_capped_by_e2bs_maximum():
    assert plan_create(SandboxSpec(timeout=100)).lifetime == 130
    assert plan_create(SandboxSpec(timeout=100)).first_timeout == 130
    capped = plan_create(SandboxSpec(timeout=10 * 86_400, options={"max_lifetime": 3600}))
    assert capped.lifetime == 3600 and capped.first_timeout == 300


# -- keys --------------------------------------------------------------------------------------------------


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("E2B_API_KEY")
    with pytest.raises(ConfigError, match="E2B_API_KEY is not set"):
        E2BBackend().check()


def test_wrong_key_is_an_auth_error_naming_the_variable(emulator, monkeypatch):
    monkeypatch.setenv("E2B_API_KEY", "e2b_wrong")
    with pytest.raises(AuthError, match="E2B_API_KEY"):
        E2BBackend().create(SandboxSpec(network="full"))
    assert emulator.live_sandboxes() == []


def test_provider_keys_never_enter_the_sandbox(create, monkeypatch):
    monkeypatch.setenv("E2B_ACCESS_TOKEN", "sk_e2b_canary_token")
    key = os.environ["E2B_API_KEY"]
    sandbox = create(env={"VISIBLE": "yes"})
    code, seen = lines_of(sandbox, ["sh", "-c", "env; cat ~/.profile"])
    output = b"".join(line for _, line in seen)
    assert code == 0 and b"VISIBLE=yes" in output
    assert key.encode() not in output and b"sk_e2b_canary_token" not in output
    assert b"E2B_API" not in output and b"E2B_SANDBOX_URL" not in output


def test_unreachable_api_names_the_url(monkeypatch):
    monkeypatch.setenv("E2B_API_URL", "http://127.0.0.1:9")
    with pytest.raises(UnavailableError, match=r"Cannot reach the E2B API at http://127.0.0.1:9") as caught:
        E2BBackend().create(SandboxSpec(network="full"))
    assert caught.value.retryable is False


# -- creation faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "requests"), [(429, 4), (503, 4), (500, 1)])
def test_busy_and_failing_creates_are_retryable_errors(backend, emulator, status, requests):
    """The SDK itself retries 429/502/503/504 three times (honouring Retry-After); what still fails is a
    retryable `UnavailableError`, which the launcher retries with backoff (then exit 202)."""
    before = emulator.stats()["create_requests"]
    emulator.faults(fail_creates=requests, fail_status=status, retry_after=0)
    with pytest.raises(UnavailableError) as caught:
        backend.create(SandboxSpec(network="full"))
    assert caught.value.retryable
    assert emulator.stats()["create_requests"] == before + requests
    assert emulator.live_sandboxes() == []


def test_a_slow_create_waits_for_e2b(backend, emulator):
    emulator.faults(hold_creates=1)
    made: list[object] = []
    worker = threading.Thread(target=lambda: made.append(backend.create(SandboxSpec(network="full"))))
    worker.start()
    deadline = time.monotonic() + 10
    while emulator.stats()["creates_held_by_fault"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.is_alive() and made == []
    emulator.release_creates()
    worker.join(10)
    (sandbox,) = made
    sandbox.destroy()  # type: ignore[attr-defined]


# -- commands ---------------------------------------------------------------------------------------------


def test_argv_is_never_resplit_by_a_shell(create):
    sandbox = create()
    tricky = ["a b", "$HOME", "'quoted'", '"double"', "semi;colon", "*", "", "new\nline"]
    code, seen = lines_of(
        sandbox, ["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *tricky]
    )
    assert code == 0
    import json

    assert json.loads(seen[0][1]) == tricky
    assert wrapped(["echo", "x y"], "/home/user/s").startswith("exec sh -c ")


def test_a_step_longer_than_the_sdks_60_s_default_is_not_cut(create, monkeypatch):
    """The SDK bounds a command by 60 s unless told otherwise; the backend passes timeout=0 (core bounds it).
    Shown with the stream's own deadline: a command outliving a 2 s lease renewed every 0.67 s."""
    sandbox = create(options={"lease": 2})
    code, seen = lines_of(sandbox, ["sh", "-c", "sleep 4; echo done"])
    assert code == 0 and seen == [("stdout", b"done\n")]


def test_lease_is_renewed_while_the_sandbox_is_used(create, emulator):
    before = emulator.stats()["timeout_updates"]
    sandbox = create(options={"lease": 1.5})
    assert sandbox.run(["sleep", "3"]) == 0
    assert emulator.stats()["timeout_updates"] >= before + 3


def test_lifetime_running_out_is_reported_as_such(create, emulator):
    sandbox = create(options={"lease": 2})
    emulator.faults(refuse_timeout_updates=100)
    with pytest.raises(SandboxError, match="its lifetime ran out: extending it failed"):
        sandbox.run(["sleep", "30"])


def test_dropped_stream_is_reattached_without_losing_the_exit_code(create, emulator):
    sandbox = create()
    emulator.faults(drop_stream_after_lines=1)
    code, seen = lines_of(sandbox, ["sh", "-c", "echo one; sleep 1; echo two; exit 5"])
    assert code == 5
    assert [line for _, line in seen] == [b"one\n", b"two\n"]
    assert emulator.stats()["streams_dropped_by_fault"] >= 1


def test_command_ending_while_the_stream_is_down_keeps_its_exit_code(create, emulator):
    sandbox = create()
    emulator.faults(drop_stream_after_lines=1)
    code, seen = lines_of(sandbox, ["sh", "-c", "echo one; exit 6"])
    assert code == 6 and seen[0] == ("stdout", b"one\n")


def test_sandbox_killed_mid_command_returns_137(create, emulator):
    sandbox = create()
    emulator.faults(kill_on_marker=1, kill_marker="ready-to-die")
    code, _ = lines_of(sandbox, ["sh", "-c", "echo ready-to-die; sleep 60"])
    assert code == 137
    with pytest.raises(SandboxError, match="no longer exists"):
        sandbox.run(["true"])


# -- sweeping --------------------------------------------------------------------------------------------


def test_list_and_destroy_work_from_another_process(create, emulator):
    sandbox = create(labels={"sweep": "me"})
    script = (
        "from metaflow_sandbox_e2b import E2BBackend\n"
        "b = E2BBackend()\n"
        "found = [i.id for i in b.list({'sweep': 'me'})]\n"
        "[b.destroy(i) for i in found]\n"
        "b.destroy('does-not-exist')\n"
        "print(','.join(found))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == sandbox.id
    assert [s for s in emulator.live_sandboxes() if s["sandboxID"] == sandbox.id] == []
    with pytest.raises(SandboxError):
        sandbox.run(["true"])

"""The remote runtime against the emulator, through the real SDK: what reaches the server, typed errors,
faults, sweeping from another process, and what never enters a box."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable

import pytest

from metaflow_sandbox_boxlite import BoxliteBackend, BoxliteSandbox
from metaflow_sandbox_core import (
    AuthError,
    ConfigError,
    Mount,
    SandboxError,
    SandboxSpec,
    UnavailableError,
)
from metaflow_sandbox_testing.boxlite_emulator import BoxliteEmulator


def output_of(sandbox: BoxliteSandbox, script: str) -> tuple[int, str]:
    lines: list[bytes] = []
    code = sandbox.run(["sh", "-c", script], on_output=lambda stream, line: lines.append(line), timeout=60)
    return code, b"".join(lines).decode()


def test_configured_by_the_sdk_variables_as_a_remote_runtime(backend: BoxliteBackend) -> None:
    assert backend.rest_url == os.environ["BOXLITE_REST_URL"]
    assert (backend.capabilities.local, backend.capabilities.can_mount) == (False, False)
    assert BoxliteBackend.capabilities.local and BoxliteBackend.capabilities.can_mount  # the local runtime's
    backend.check()  # no VM probe for a server


def test_api_key_never_enters_a_box(
    create: Callable[..., BoxliteSandbox], emulator: BoxliteEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = emulator.env()["BOXLITE_API_KEY"]
    monkeypatch.setenv("LAUNCHER_ONLY", "launcher-secret")
    sandbox = create(env={"VISIBLE": "yes"})
    code, text = output_of(sandbox, "env; cat /proc/self/environ 2>/dev/null | tr '\\0' '\\n'")
    assert code == 0 and "VISIBLE=yes" in text
    assert key not in text and "BOXLITE_" not in text and "launcher-secret" not in text
    (box,) = emulator.live_boxes()
    assert key not in repr(box["request"])


def test_sizes_and_network_reach_the_create_request(
    create: Callable[..., BoxliteSandbox], emulator: BoxliteEmulator
) -> None:
    create(cpu=1.5, memory_mb=1024, disk_mb=1500, network="none")
    create(network="datastore", network_allow=("s3.example.com:443", "127.0.0.1:9000", "s3.example.com:80"))
    create(network="datastore")  # nothing to reach: no network at all
    create(
        network="datastore", network_allow=("127.0.0.1:9000",), egress_allow=("*.example.org", "10.0.0.0/8")
    )
    requests = [box["request"] for box in sorted(emulator.live_boxes(), key=lambda b: b["created_at"])]
    assert {k: requests[0][k] for k in ("cpus", "memory_mib", "disk_size_gb")} == {
        "cpus": 2,
        "memory_mib": 1024,
        "disk_size_gb": 2,
    }
    assert requests[0]["network"] == {"mode": "disabled"}
    assert requests[1]["network"] == {"mode": "enabled", "allow_net": ["s3.example.com", "127.0.0.1"]}
    assert requests[2]["network"] == {"mode": "disabled"}
    assert requests[3]["network"] == {
        "mode": "enabled",
        "allow_net": ["127.0.0.1", "*.example.org", "10.0.0.0/8"],
    }
    assert all(r["auto_delete"] == 60 and r["name"].startswith("mfs-") for r in requests)


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ({"gpu": 1}, "gpu=1"),
        ({"mounts": (Mount("/data", "/data"),)}, "--datastore=s3"),
    ],
)
def test_bad_input_is_refused_before_any_box(
    backend: BoxliteBackend, emulator: BoxliteEmulator, spec: dict[str, object], names: str
) -> None:
    before = emulator.stats()["create_requests"]
    with pytest.raises(ConfigError, match=names):
        backend.validate(SandboxSpec(**spec))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=names):
        backend.create(SandboxSpec(**spec))  # type: ignore[arg-type]
    assert emulator.stats()["create_requests"] == before


def test_failed_create_is_retryable_and_leaves_nothing(
    backend: BoxliteBackend, emulator: BoxliteEmulator
) -> None:
    emulator.faults(fail_creates=1, fail_status=503)
    with pytest.raises(UnavailableError, match="emulated failure") as raised:
        backend.create(SandboxSpec())
    assert raised.value.retryable
    assert os.listdir(os.path.join(backend.state_dir, "labels")) == []
    backend.create(SandboxSpec()).destroy()  # the next one works


def test_rejected_key_is_an_auth_error(
    emulator: BoxliteEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    for name, value in emulator.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BOXLITE_API_KEY", "wrong")
    with pytest.raises(AuthError, match="BOXLITE_API_KEY"):
        BoxliteBackend(state_dir=str(tmp_path)).create(SandboxSpec())


def test_unreachable_server_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("BOXLITE_REST_URL", "http://127.0.0.1:9")  # discard: nothing listens
    with pytest.raises(SandboxError, match=r"127\.0\.0\.1:9"):
        BoxliteBackend(state_dir=str(tmp_path)).create(SandboxSpec())


def test_box_that_dies_mid_command_ends_it_with_137(
    create: Callable[..., BoxliteSandbox], emulator: BoxliteEmulator
) -> None:
    sandbox = create()
    emulator.faults(kill_on_marker=1, kill_marker="DIE-NOW")
    code, text = output_of(sandbox, "echo before; echo DIE-NOW; sleep 30; echo never")
    assert code == 137 and "never" not in text
    with pytest.raises(SandboxError, match="no longer exists"):
        sandbox.run(["true"])
    assert emulator.live_boxes() == []


def test_dropped_attach_stream_still_gives_the_exit_code(
    create: Callable[..., BoxliteSandbox], emulator: BoxliteEmulator
) -> None:
    sandbox = create()
    emulator.faults(drop_attach_after_frames=1)
    done: list[object] = []

    def run() -> None:
        try:
            done.append(output_of(sandbox, "echo one; sleep 0.5; echo two; sleep 0.5; echo three")[0])
        except SandboxError as error:
            done.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    assert done, "run() hung after the attach WebSocket was dropped"
    assert done[0] == 0  # the SDK re-attaches, then asks for the execution's status


def test_list_and_destroy_from_another_process(
    create: Callable[..., BoxliteSandbox], backend: BoxliteBackend, emulator: BoxliteEmulator
) -> None:
    mine = create(labels={"metaflow.run": "7", "metaflow.step": "a"})
    other = create(labels={"metaflow.run": "8"})
    script = textwrap.dedent(
        f"""
        from metaflow_sandbox_boxlite import BoxliteBackend
        backend = BoxliteBackend(state_dir={backend.state_dir!r})
        (found,) = backend.list({{"metaflow.run": "7"}})
        assert found.id == {mine.id!r} and found.labels["metaflow.step"] == "a", found
        backend.destroy(found.id)
        backend.destroy(found.id)  # a missing box is fine
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert [box["box_id"] for box in emulator.live_boxes()] != [] and mine.id not in {
        box["box_id"] for box in emulator.live_boxes()
    }
    assert [info.id for info in backend.list({"metaflow.run": "7"})] == []
    emulator.kill_box(other.id)  # gone without destroy(): list() forgets its labels
    backend.list()
    assert os.listdir(os.path.join(backend.own_dir, "labels")) == []


def test_sdk_buffers_unread_output(create: Callable[..., BoxliteSandbox]) -> None:
    """Why the conformance suite's flat-memory test is an expected failure here: the SDK itself reads all output
    into its own buffer while nobody consumes the stream."""
    script = textwrap.dedent(
        """
        import asyncio, boxlite, os
        def rss(): return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        async def main():
            runtime = boxlite.Boxlite.rest(boxlite.BoxliteRestOptions.from_env())
            box = await runtime.create(boxlite.BoxOptions())
            try:
                execution = await box.exec("sh", ["-c", "yes 0123456789abcdef | head -c 40000000"])
                stream, before = execution.stdout(), rss()
                await asyncio.sleep(3)  # nothing read
                print((rss() - before) // 2**20)
                async for _ in stream: pass
            finally:
                await runtime.remove(box.id, force=True)
                await asyncio.sleep(0.2)
        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) >= 30  # MiB held by the SDK for 40 MB nobody read


def test_tasks_that_succeed_exit_zero(emulator: BoxliteEmulator, tmp_path) -> None:
    """boxlite 0.10.8 in REST mode may abort (SIGABRT, 134) at interpreter exit: a process that used the
    backend and finished its work must still exit 0."""
    script = textwrap.dedent(
        f"""
        from metaflow_sandbox_boxlite import BoxliteBackend
        from metaflow_sandbox_core import SandboxSpec
        with BoxliteBackend(state_dir={str(tmp_path)!r}).create(SandboxSpec()) as sandbox:
            assert sandbox.run(["true"]) == 0
        """
    )
    env = {**os.environ, **emulator.env()}
    codes = [
        subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60).returncode
        for _ in range(12)
    ]
    assert codes == [0] * 12


@pytest.mark.parametrize(
    ("entry", "fix"),
    [("api.example.com:443", "enforces only host, "), ("2001:db8::/32", "IPv4 CIDRs only")],
)
def test_allow_list_forms_boxlite_cannot_take_are_refused(
    backend: BoxliteBackend, entry: str, fix: str
) -> None:
    with pytest.raises(ConfigError, match=fix):
        backend.create(SandboxSpec(network="datastore", egress_allow=(entry,)))

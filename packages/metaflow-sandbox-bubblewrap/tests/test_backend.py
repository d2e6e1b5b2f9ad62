"""BubblewrapBackend: check(), validation, state directory, entry point, destroy by id from elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from metaflow_sandbox_bubblewrap import BubblewrapBackend, probe
from metaflow_sandbox_bubblewrap.state import STATE_DIR_ENV, StateRoot
from metaflow_sandbox_core import (
    ConfigError,
    EgressKind,
    Isolation,
    Mount,
    NetworkPolicy,
    SandboxSpec,
    UnavailableError,
    load_backend,
)


def test_registered_under_its_entry_point() -> None:
    backend = load_backend("bubblewrap")
    assert isinstance(backend, BubblewrapBackend)
    assert backend.capabilities.isolation is Isolation.NAMESPACES
    assert backend.capabilities.local and backend.capabilities.can_mount
    # DATASTORE is enforced by the egress proxy (test_egress.py), for every form of allow-list entry.
    assert backend.capabilities.network_policies == frozenset(NetworkPolicy)
    assert backend.capabilities.egress_kinds == frozenset(EgressKind)


def test_missing_bwrap_on_path_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="apt-get install -y bubblewrap"):
        BubblewrapBackend().check()
    with pytest.raises(ConfigError, match="apt-get install -y bubblewrap"):
        BubblewrapBackend(state_dir=str(tmp_path)).create(SandboxSpec())
    assert not list(tmp_path.iterdir()), "nothing may be created when bwrap is missing"


def test_missing_configured_bwrap_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="apt-get install -y bubblewrap"):
        BubblewrapBackend(bwrap=str(tmp_path / "bwrap")).check()


def test_failing_probe_is_unavailable_not_retryable_and_quotes_bwrap(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(UnavailableError) as raised:
        BubblewrapBackend(bwrap=str(fake)).check()
    assert raised.value.retryable is False
    assert "setting up uid map: Permission denied" in str(raised.value)
    assert "user namespaces" in str(raised.value)


def test_probe_result_is_cached(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    counter = tmp_path / "calls"
    fake.write_text(f"#!/bin/sh\necho x >> '{counter}'\nexit 0\n")
    fake.chmod(0o755)
    for _ in range(3):
        BubblewrapBackend(bwrap=str(fake)).check()
    assert counter.read_text().count("x") == 1
    probe.probe_failure.cache_clear()


def test_state_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    assert StateRoot().path == str(tmp_path / "state")
    monkeypatch.delenv(STATE_DIR_ENV)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert StateRoot().path == str(tmp_path / "metaflow-sandbox" / "bubblewrap")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert StateRoot().path.endswith(f"/metaflow-sandbox-{os.getuid()}/bubblewrap")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SandboxSpec(image="python:3.11"), "cannot use images"),
        (SandboxSpec(mounts=(Mount("/does/not/exist", "/data"),)), "must be an absolute path that exists"),
        (SandboxSpec(mounts=(Mount("/usr", "/"),)), "root"),
    ],
)
def test_unusable_specs_are_refused_before_anything_is_created(
    bubblewrap_backend: BubblewrapBackend, spec: SandboxSpec, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        bubblewrap_backend.create(spec)
    assert bubblewrap_backend.list() == []


def test_sandbox_json_records_running_commands(bubblewrap_backend: BubblewrapBackend) -> None:
    sandbox = bubblewrap_backend.create(SandboxSpec(labels={"flow": "F"}))
    with sandbox:
        seen: list[dict[str, Any]] = []

        def snapshot(stream: str, line: bytes) -> None:
            with open(sandbox.layout.record_file) as record:
                seen.append(json.load(record))

        assert sandbox.run(["echo", "hi"], on_output=snapshot, timeout=30) == 0
        assert seen[0]["id"] == sandbox.id and seen[0]["labels"] == {"flow": "F"}
        assert [ref["pid"] for ref in seen[0]["processes"]] != []
        with open(sandbox.layout.record_file) as record:
            assert json.load(record)["processes"] == []


def test_malformed_id_is_refused(bubblewrap_backend: BubblewrapBackend) -> None:
    with pytest.raises(ConfigError):
        bubblewrap_backend.destroy("../../etc")
    bubblewrap_backend.destroy("bwrap-0000000000000000")  # well-formed but missing: fine


def test_destroy_by_id_from_another_process(bubblewrap_backend: BubblewrapBackend) -> None:
    """A sweeper that did not create the sandbox kills its running command and removes it."""
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from metaflow_sandbox_bubblewrap import BubblewrapBackend
                from metaflow_sandbox_core import SandboxSpec
                sandbox = BubblewrapBackend(state_dir={bubblewrap_backend.state.path!r}).create(SandboxSpec())
                code = sandbox.run(["sh", "-c", "echo " + sandbox.id + "; sleep 60"], timeout=90,
                                   on_output=lambda s, line: print(line.decode().strip(), flush=True))
                print("exit", code, flush=True)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    try:
        sandbox_id = owner.stdout.readline().strip()
        assert [info.id for info in bubblewrap_backend.list()] == [sandbox_id]
        started = time.monotonic()
        bubblewrap_backend.destroy(sandbox_id)
        assert owner.stdout.readline().strip() == "exit 137"
        assert owner.wait(10) == 0
        assert time.monotonic() - started < 5
        assert bubblewrap_backend.list() == []
    finally:
        owner.kill()
        owner.wait()

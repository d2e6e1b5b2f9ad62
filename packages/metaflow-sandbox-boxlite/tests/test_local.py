"""The local runtime: what can be checked on any host (the options it builds, the probe's cache and its one-line
message, the OCI layout writer), and the boot probe itself, which on hosts that cannot boot a VM must fail
cleanly: one line with the reason, no boxlite process, box or disk left."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

from metaflow_sandbox_boxlite import BoxliteBackend, probe
from metaflow_sandbox_boxlite.oci_layout import write_layout
from metaflow_sandbox_core import ConfigError, Mount, SandboxError, SandboxSpec, UnavailableError


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, tmp_path) -> BoxliteBackend:
    for name in ("BOXLITE_REST_URL", "BOXLITE_API_KEY", "BOXLITE_REST_PATH_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    return BoxliteBackend(home_dir=str(tmp_path / "home"), state_dir=str(tmp_path / "state"))


def test_local_runtime_capabilities(local: BoxliteBackend) -> None:
    caps = local.capabilities
    assert (caps.local, caps.can_mount, caps.isolation.name) == (True, True, "MICROVM")


def test_local_options_mount_security_and_network(local: BoxliteBackend) -> None:
    spec = SandboxSpec(
        mounts=(Mount("/data/.metaflow", "/data/.metaflow", read_only=True),),
        network="datastore",
        network_allow=("127.0.0.1:9000", "s3.amazonaws.com:443"),
        cpu=2,
        memory_mb=2048,
    )
    plan = local.plan(spec)
    assert plan["volumes"] == [("/data/.metaflow", "/data/.metaflow", True)]
    security = plan["advanced"].security
    assert security.jailer_enabled and security.seccomp_enabled  # the standard preset, never all-off
    # the guest reaches the host's loopback through boxlite's host alias, which must be listed
    assert plan["network"].outbound.allow_net == ["192.168.127.254", "s3.amazonaws.com"]
    assert (plan["cpus"], plan["memory_mib"], plan["image"]) == (2, 2048, "python:3.12-slim")
    local._options(spec)  # the SDK accepts them


def test_local_image_directory_must_be_an_oci_layout(local: BoxliteBackend, tmp_path) -> None:
    (tmp_path / "rootfs" / "bin").mkdir(parents=True)
    with pytest.raises(ConfigError, match="oci_layout ROOTFS_DIR LAYOUT_DIR"):
        local.validate(SandboxSpec(image=str(tmp_path / "rootfs")))
    layout = write_layout(str(tmp_path / "rootfs"), str(tmp_path / "layout"))
    assert local.plan(SandboxSpec(image=layout))["rootfs_path"] == layout


def test_oci_layout_is_consistent(tmp_path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    (rootfs / "bin").symlink_to("usr/bin")
    layout = tmp_path / "layout"
    write_layout(str(rootfs), str(layout))
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}

    def blob(digest: str) -> bytes:
        data = (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest.split(":")[1]
        return data

    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    manifest = json.loads(blob(entry["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    layer = gzip.decompress(blob(manifest["layers"][0]["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
        names = {member.name: member for member in archive.getmembers()}
    assert names["bin"].issym() and names["usr/bin/hello"].isfile()


def test_cached_probe_failure_is_one_line_naming_the_fixes(local: BoxliteBackend) -> None:
    os.makedirs(local.state_dir)
    version = __import__("boxlite").__version__
    with open(os.path.join(local.state_dir, probe.CACHE), "w") as cache:
        json.dump({"key": probe.probe_key(version), "problem": "EngineError: the VM failed to start"}, cache)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not accessible here: check() stops before the probe")
    with pytest.raises(UnavailableError) as raised:
        local.check()
    message = str(raised.value)
    assert "\n" not in message and not raised.value.retryable
    for part in (
        "KVM is present but cannot boot",
        "the VM failed to start",
        "BOXLITE_REST_URL",
        "@bubblewrap",
    ):
        assert part in message


def _boxlite_processes() -> list[str]:
    found = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "boxlite-shim" in line or "metaflow_sandbox_boxlite.probe" in line]


def test_boot_probe_answers_in_bounded_time_and_leaves_nothing(local_probe: object) -> None:
    """The real probe, once per host and boxlite version (cached in the default state dir)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no accessible /dev/kvm: the probe is not run")
    before = _boxlite_processes()
    reason = local_probe()  # type: ignore[operator]
    assert _boxlite_processes() == before
    state = BoxliteBackend().state_dir
    assert not [name for name in os.listdir(state) if name.startswith("probe-home-")]
    if reason is not None:
        assert "\n" not in reason and "KVM is present but cannot boot a virtual machine" in reason


def test_local_box_runs_a_command(local_backend: BoxliteBackend) -> None:
    """Where a VM boots: a box of the default image runs Python >= 3.8 (skipped with the probe's reason)."""
    with local_backend.create(SandboxSpec(network="none")) as box:
        lines: list[bytes] = []
        code = box.run(
            ["python3", "-c", "import sys; assert sys.version_info >= (3, 8); print('ok')"],
            on_output=lambda stream, line: lines.append(line),
            timeout=120,
        )
        assert (code, lines) == (0, [b"ok\n"])
    with pytest.raises(SandboxError):
        box.run(["true"])


def test_automatic_choice_never_picks_boxlite_when_its_probe_fails(
    local_probe: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`@sandbox` without a backend: boxlite (MICROVM) is tried first, and passed over with its reason here."""
    from metaflow_sandbox_core import available_backends, pick_default_backend

    for name in ("BOXLITE_REST_URL", "BOXLITE_API_KEY", "BOXLITE_REST_PATH_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    reason = local_probe()  # type: ignore[operator]
    assert "boxlite" in available_backends()
    try:
        name, _ = pick_default_backend()
    except ConfigError as error:
        assert reason is not None and "boxlite: KVM is present but cannot boot" in str(error)
        return
    assert (name == "boxlite") == (reason is None)


def test_remote_runtime_is_never_chosen_automatically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOXLITE_REST_URL", "http://127.0.0.1:9")
    assert not BoxliteBackend().capabilities.local

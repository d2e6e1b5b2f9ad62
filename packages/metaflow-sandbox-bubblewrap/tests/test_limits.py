"""Resource limits, against real bwrap (the cgroup parts skip with the reason where none can be made)."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable

import pytest

from metaflow_sandbox_bubblewrap import BubblewrapBackend, BubblewrapSandbox
from metaflow_sandbox_bubblewrap.limits import pick_cpus
from metaflow_sandbox_bubblewrap.sandbox import LIVE_SANDBOXES
from metaflow_sandbox_core import ConfigError, SandboxSpec

CreateSandbox = Callable[..., BubblewrapSandbox]
Shell = Callable[..., tuple[int, str]]


def test_memory_limit_kills_a_sandbox_that_exceeds_it(create_bubblewrap: CreateSandbox, shell: Shell) -> None:
    sandbox = create_bubblewrap(memory_mb=64)
    if "memory" not in sandbox.limits.cgroup.limits:
        pytest.skip(f"no memory cgroup here: {sandbox.limits.enforcement['memory']}")
    # `tail -n 1` keeps a newline-free input in memory: a coreutils-only way to allocate.
    assert shell(sandbox, "head -c 16000000 /dev/zero | tail -n 1 > /dev/null") == (0, "")
    assert not sandbox.memory_exceeded()
    code, output = shell(sandbox, "head -c 200000000 /dev/zero | tail -n 1 > /dev/null")
    assert code == 137, f"allocating 200 MB under a 64 MiB limit ended with {code}: {output}"
    assert sandbox.memory_exceeded(), "the memory cgroup killed a process but the sandbox does not say so"


def test_memory_exceeded_reads_the_kill_count_of_either_cgroup_version(tmp_path) -> None:
    from metaflow_sandbox_bubblewrap.cgroups import SandboxCgroup

    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\noom_group_kill 0\n")
    cgroups = [
        SandboxCgroup(limits={"memory": str(v1 / "memory.limit_in_bytes")}),
        SandboxCgroup(limits={"memory": str(v2 / "memory.max")}),
    ]
    assert [c.memory_exceeded() for c in cgroups] == [False, False]
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\noom_group_kill 0\n")
    assert [c.memory_exceeded() for c in cgroups] == [True, True]
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")  # kernels before 4.13
    (v1 / "memory.failcnt").write_text("4\n")
    assert cgroups[0].memory_exceeded()
    assert not SandboxCgroup().memory_exceeded()
    assert not SandboxCgroup(limits={"memory": str(tmp_path / "gone" / "memory.max")}).memory_exceeded()


@pytest.mark.parametrize("cpu", [1, 1.5])
def test_cpu_sets_affinity_visible_as_nproc(
    create_bubblewrap: CreateSandbox, shell: Shell, cpu: float
) -> None:
    expected = min(math.ceil(cpu), len(os.sched_getaffinity(0)))
    sandbox = create_bubblewrap(cpu=cpu)
    assert shell(sandbox, "nproc") == (0, f"{expected}\n")
    assert "affinity" in sandbox.limits.enforcement["cpu"]


def test_disk_caps_single_file_size(create_bubblewrap: CreateSandbox, shell: Shell) -> None:
    sandbox = create_bubblewrap(disk_mb=1)
    assert shell(sandbox, "head -c 500000 /dev/zero > /tmp/small")[0] == 0
    assert shell(sandbox, "head -c 2000000 /dev/zero > /tmp/big")[0] != 0


def test_cgroups_are_removed_on_destroy_even_with_commands_running(create_bubblewrap: CreateSandbox) -> None:
    sandbox = create_bubblewrap(cpu=1, memory_mb=256)
    dirs = sandbox.limits.cgroup.dirs
    if not dirs:
        pytest.skip(f"no cgroup could be created here: {sandbox.limits.cgroup.failures}")
    started = threading.Event()
    runner = threading.Thread(
        target=sandbox.run,
        args=(["sh", "-c", "sleep 60 & echo started; wait"],),
        kwargs={"timeout": 90, "on_output": lambda stream, line: started.set()},
        daemon=True,
    )
    runner.start()
    assert started.wait(10)
    for directory in dirs:
        with open(os.path.join(directory, "cgroup.procs")) as procs:
            assert procs.read().split(), f"the command is not in {directory}"
    sandbox.destroy()
    runner.join(5)
    assert not runner.is_alive()
    assert not [d for d in dirs if os.path.exists(d)]


def test_gpu_is_refused_before_anything_is_created(bubblewrap_backend: BubblewrapBackend) -> None:
    with pytest.raises(ConfigError, match="GPU"):
        bubblewrap_backend.create(SandboxSpec(gpu=1))
    assert bubblewrap_backend.list() == []


@pytest.mark.parametrize(
    ("cpu", "available", "seed", "expected"),
    [
        (1, [0, 1, 2, 3], 0, {0}),
        (1, [0, 1, 2, 3], 6, {2}),
        (2.5, [0, 1, 2, 3], 3, {3, 0, 1}),
        (8, [4, 5], 1, {4, 5}),
    ],
)
def test_pick_cpus(cpu: float, available: list[int], seed: int, expected: set[int]) -> None:
    assert pick_cpus(cpu, available, seed) == expected


def test_destroy_by_id_removes_cgroups_whose_record_is_gone(
    bubblewrap_backend: BubblewrapBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = bubblewrap_backend.create(SandboxSpec(memory_mb=256))
    dirs = sandbox.limits.cgroup.dirs
    if not dirs:
        pytest.skip(f"no cgroup could be created here: {sandbox.limits.cgroup.failures}")
    try:
        monkeypatch.delitem(LIVE_SANDBOXES, sandbox.id)  # as if created by another process
        os.unlink(sandbox.layout.record_file)  # e.g. the state directory was wiped
        bubblewrap_backend.destroy(sandbox.id)
        assert not [d for d in dirs if os.path.exists(d)]
    finally:
        sandbox.destroy()

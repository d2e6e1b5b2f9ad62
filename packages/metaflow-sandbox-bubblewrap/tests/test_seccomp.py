"""The seccomp program, run by a small classic-BPF interpreter for both arches (pure logic; the filter's
effect in real sandboxes is checked by test_hardening.py)."""

from __future__ import annotations

import errno

import pytest

from metaflow_sandbox_bubblewrap.seccomp import (
    AARCH64,
    DENIED,
    RET_ALLOW,
    RET_KILL_PROCESS,
    X86_64,
    Arch,
    assemble,
    build_program,
    ret_errno,
)

EPERM, ENOSYS = ret_errno(errno.EPERM), ret_errno(errno.ENOSYS)
#: A call every program needs: read (x86_64 0, aarch64 63).
READ = {"x86_64": 0, "aarch64": 63}


def evaluate(arch: Arch, nr: int, *args: int, audit_arch: int | None = None) -> int:
    """The action the program returns for one system call."""
    words = {0: nr, 4: audit_arch if audit_arch is not None else arch.audit_arch}
    for index, value in enumerate(args):
        words[16 + 8 * index] = value & 0xFFFFFFFF
    program, pc, acc = build_program(arch), 0, 0
    while True:
        code, jt, jf, k = program[pc]
        if code == 0x20:
            acc = words.get(k, 0)
            pc += 1
        elif code in (0x15, 0x35, 0x45):
            taken = acc == k if code == 0x15 else acc >= k if code == 0x35 else bool(acc & k)
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


@pytest.mark.parametrize("arch", [X86_64, AARCH64], ids=lambda a: a.name)
def test_denied_calls_answer_eperm_and_others_pass(arch: Arch) -> None:
    n = arch.numbers
    for name in DENIED:
        if name in n:
            assert evaluate(arch, n[name]) == EPERM, name
    assert evaluate(arch, READ[arch.name]) == RET_ALLOW
    assert evaluate(arch, n["clone3"]) == ENOSYS
    assert evaluate(arch, n["clone"], 0x01200011) == RET_ALLOW  # fork: CLONE_CHILD_SETTID|CLEARTID|SIGCHLD
    assert evaluate(arch, n["clone"], 0x003D0F00) == RET_ALLOW  # a pthread
    for flag in (0x10000000, 0x20000000, 0x40000000, 0x00020000, 0x08000000, 0x04000000, 0x02000000):
        assert evaluate(arch, n["clone"], flag | 17) == EPERM, hex(flag)
        assert evaluate(arch, n["unshare"], flag) == EPERM, hex(flag)
    assert evaluate(arch, n["unshare"], 0x80) == EPERM  # CLONE_NEWTIME
    assert evaluate(arch, n["unshare"], 0x400) == RET_ALLOW  # CLONE_FILES
    assert evaluate(arch, n["personality"], 0xFFFFFFFF) == RET_ALLOW
    assert evaluate(arch, n["personality"], 0) == RET_ALLOW
    assert evaluate(arch, n["personality"], 0x0040000) == EPERM  # ADDR_NO_RANDOMIZE
    assert evaluate(arch, n["ioctl"], 1, 0x5412) == EPERM
    assert evaluate(arch, n["ioctl"], 1, 0x5401) == RET_ALLOW  # TCGETS


def test_foreign_abis_are_killed() -> None:
    assert evaluate(X86_64, 0, audit_arch=0x40000003) == RET_KILL_PROCESS  # i386 via int 0x80
    assert evaluate(X86_64, 0x40000000 | 0) == RET_KILL_PROCESS  # x32
    assert evaluate(AARCH64, 63, audit_arch=0x40000028) == RET_KILL_PROCESS  # arm 32-bit


@pytest.mark.parametrize("arch", [X86_64, AARCH64], ids=lambda a: a.name)
def test_program_fits_the_kernel_limit(arch: Arch) -> None:
    program = build_program(arch)
    assert len(program) < 4096
    assert len(assemble(program)) == 8 * len(program)

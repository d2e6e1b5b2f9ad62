"""The seccomp filter of bubblewrap sandboxes: a classic BPF program, built here in pure Python, that bwrap
installs (`--seccomp FD`) just before it runs the sandboxed command.

What it denies (with EPERM unless noted) is what a step never needs and what widens the kernel's attack
surface, checked against Docker's default profile: tracing other processes (`ptrace`, `process_vm_*`,
`pidfd_getfd`, `kcmp`), the kernel keyring, `bpf`, `perf_event_open`, `userfaultfd`, `io_uring`, new
namespaces (`unshare`/`clone` with a namespace flag, `setns`), mounting (old and new mount API), kernel
modules, `kexec`, `reboot`, swap, `acct`, quotas, raw I/O ports, file handles, the kernel log, setting the
clock, non-default `personality`, and faking terminal input (`ioctl` TIOCSTI/TIOCLINUX). `clone3` answers
ENOSYS: its flags live in memory a filter cannot read, and ENOSYS makes glibc fall back to `clone`, whose
flags it can. A foreign architecture (32-bit or x32 system calls on x86_64) kills the process.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
from collections.abc import Iterable
from dataclasses import dataclass

# -- classic BPF ----------------------------------------------------------------------------------------

_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x05 | 0x10  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x05 | 0x30  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x05 | 0x40  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K

RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000

#: Offsets in `struct seccomp_data`: nr, arch, then 64-bit args (the low half first on little-endian).
_NR, _ARCH = 0, 4


def _arg_low(index: int) -> int:
    return 16 + 8 * index


def ret_errno(code: int) -> int:
    return _RET_ERRNO | code


Instruction = tuple[int, int, int, int]  # code, jt, jf, k


def _load(offset: int) -> Instruction:
    return (_LD_W_ABS, 0, 0, offset)


def _ret(action: int) -> Instruction:
    return (_RET_K, 0, 0, action)


# -- what is denied -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    name: str
    audit_arch: int
    #: System call number → name, for the calls this filter looks at.
    numbers: dict[str, int]
    #: Numbers at or above this are another ABI on the same arch (x32 on x86_64), refused.
    foreign_from: int | None = None


#: Syscall numbers (x86_64, aarch64); None where the call does not exist on that arch.
_NUMBERS: dict[str, tuple[int | None, int | None]] = {
    "acct": (163, 89),
    "add_key": (248, 217),
    "adjtimex": (159, 171),
    "bpf": (321, 280),
    "clock_adjtime": (305, 266),
    "clock_settime": (227, 112),
    "clone": (56, 220),
    "clone3": (435, 435),
    "create_module": (174, None),
    "delete_module": (176, 106),
    "fanotify_init": (300, 262),
    "finit_module": (313, 273),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fsopen": (430, 430),
    "fspick": (433, 433),
    "get_kernel_syms": (177, None),
    "init_module": (175, 105),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "io_uring_setup": (425, 425),
    "ioctl": (16, 29),
    "ioperm": (173, None),
    "iopl": (172, None),
    "kcmp": (312, 272),
    "kexec_file_load": (320, 294),
    "kexec_load": (246, 104),
    "keyctl": (250, 219),
    "lookup_dcookie": (212, 18),
    "mount": (165, 40),
    "mount_setattr": (442, 442),
    "move_mount": (429, 429),
    "name_to_handle_at": (303, 264),
    "nfsservctl": (180, 42),
    "open_by_handle_at": (304, 265),
    "open_tree": (428, 428),
    "perf_event_open": (298, 241),
    "personality": (135, 92),
    "pidfd_getfd": (438, 438),
    "pivot_root": (155, 41),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "ptrace": (101, 117),
    "query_module": (178, None),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "reboot": (169, 142),
    "request_key": (249, 218),
    "setns": (308, 268),
    "settimeofday": (164, 170),
    "swapoff": (168, 225),
    "swapon": (167, 224),
    "_sysctl": (156, None),
    "sysfs": (139, None),
    "syslog": (103, 116),
    "umount2": (166, 39),
    "unshare": (272, 97),
    "uselib": (134, None),
    "userfaultfd": (323, 282),
    "ustat": (136, None),
}

#: Denied outright with EPERM.
DENIED = tuple(sorted(set(_NUMBERS) - {"clone", "clone3", "ioctl", "personality", "unshare"}))

#: CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (clone's low byte is the exit signal).
CLONE_NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)
#: ...and CLONE_NEWTIME, which only unshare takes.
UNSHARE_NAMESPACE_FLAGS = CLONE_NAMESPACE_FLAGS | 0x00000080
#: personality() values allowed (as Docker does): PER_LINUX, PER_LINUX32, UNAME26 variants, and the query.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
#: ioctl requests denied: TIOCSTI (push input into a terminal) and TIOCLINUX.
DENIED_IOCTLS = (0x5412, 0x541C)


def _arch_table(column: int) -> dict[str, int]:
    table: dict[str, int] = {}
    for name, numbers in _NUMBERS.items():
        number = numbers[column]
        if number is not None:
            table[name] = number
    return table


X86_64 = Arch("x86_64", 0xC000003E, _arch_table(0), foreign_from=0x40000000)
AARCH64 = Arch("aarch64", 0xC00000B7, _arch_table(1))
ARCHES = {"x86_64": X86_64, "amd64": X86_64, "aarch64": AARCH64, "arm64": AARCH64}


def host_arch() -> Arch | None:
    """This machine's arch, or None where no filter is defined (then sandboxes run without one)."""
    return ARCHES.get(platform.machine().lower())


# -- the program ----------------------------------------------------------------------------------------


def _deny_if_flags(nr: int, arg: int, mask: int, action: int) -> list[Instruction]:
    """If nr matches and (arg & mask) != 0: `action`; otherwise fall through with nr reloaded."""
    return [
        (_JEQ_K, 0, 4, nr),
        _load(_arg_low(arg)),
        (_JSET_K, 0, 1, mask),
        _ret(action),
        _load(_NR),
    ]


def _allow_only(nr: int, arg: int, values: Iterable[int], action: int) -> list[Instruction]:
    """If nr matches: allow when the arg is one of `values`, else `action`."""
    values = tuple(values)
    body: list[Instruction] = [_load(_arg_low(arg))]
    for index, value in enumerate(values):
        body.append((_JEQ_K, len(values) - index, 0, value))  # to the ALLOW after the default action
    body += [_ret(action), _ret(RET_ALLOW)]
    return [(_JEQ_K, 0, len(body), nr), *body]


def _deny_values(nr: int, arg: int, values: Iterable[int], action: int) -> list[Instruction]:
    """If nr matches and the arg is one of `values`: `action`; otherwise allow."""
    values = tuple(values)
    body: list[Instruction] = [_load(_arg_low(arg))]
    for index, value in enumerate(values):
        body.append((_JEQ_K, len(values) - index, 0, value))  # to the denial after the ALLOW
    body += [_ret(RET_ALLOW), _ret(action)]
    return [(_JEQ_K, 0, len(body), nr), *body]


def build_program(arch: Arch) -> list[Instruction]:
    """The filter as a list of classic BPF instructions."""
    eperm = ret_errno(errno.EPERM)
    n = arch.numbers
    program: list[Instruction] = [
        _load(_ARCH),
        (_JEQ_K, 1, 0, arch.audit_arch),
        _ret(RET_KILL_PROCESS),
        _load(_NR),
    ]
    if arch.foreign_from is not None:
        program += [(_JGE_K, 0, 1, arch.foreign_from), _ret(RET_KILL_PROCESS)]
    for name in DENIED:
        if name in n:
            program += [(_JEQ_K, 0, 1, n[name]), _ret(eperm)]
    program += [(_JEQ_K, 0, 1, n["clone3"]), _ret(ret_errno(errno.ENOSYS))]
    program += _deny_if_flags(n["clone"], 0, CLONE_NAMESPACE_FLAGS, eperm)
    program += _deny_if_flags(n["unshare"], 0, UNSHARE_NAMESPACE_FLAGS, eperm)
    program += _allow_only(n["personality"], 0, PERSONALITIES, eperm)
    program += _deny_values(n["ioctl"], 1, DENIED_IOCTLS, eperm)
    program.append(_ret(RET_ALLOW))
    return program


def assemble(program: Iterable[Instruction]) -> bytes:
    """`struct sock_filter[]` in native byte order, as `bwrap --seccomp` reads it."""
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def filter_bytes(arch: Arch | None = None) -> bytes | None:
    """The compiled filter for `arch` (default: this machine's), or None where none is defined."""
    arch = arch or host_arch()
    return None if arch is None else assemble(build_program(arch))


def filter_fd(data: bytes) -> int:
    """A readable file descriptor holding `data` (an anonymous memfd, rewound), for `--seccomp FD`.
    The caller passes it to bwrap (`pass_fds`) and closes it after the start."""
    fd = os.memfd_create("metaflow-sandbox-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd

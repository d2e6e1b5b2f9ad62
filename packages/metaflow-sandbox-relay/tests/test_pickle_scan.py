"""The streaming pickle scan: every way a pickle can reach a global is checked; nothing is ever loaded."""

import gzip
import io
import os
import pickle
import resource
import struct

import pytest

from metaflow_sandbox_relay import PickleRefused, pickle_problem, scan_pickle, trust_rule
from metaflow_sandbox_relay.pickle_scan import MAX_STACK

SAFE = trust_rule(None)


def refused(data: bytes, allowed=SAFE) -> str:
    with pytest.raises(PickleRefused) as error:
        scan_pickle(io.BytesIO(data), allowed)
    return str(error.value)


def su(text: str) -> bytes:  # SHORT_BINUNICODE
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def test_stack_global_from_the_memo_is_resolved():
    # "os" and "system" are memoized, popped, then fetched back for STACK_GLOBAL.
    data = b"\x80\x04" + su("os") + b"\x94" + su("system") + b"\x94" + b"0" + b"0" + b"h\x00h\x01\x93)R."
    assert refused(data) == "it references os.system"


def test_protocol_0_global_and_inst_are_checked():
    assert refused(b"cos\nsystem\n(S'echo'\ntR.") == "it references os.system"
    assert refused(b"(S'echo'\nios\nsystem\n.") == "it references os.system"


def test_python2_names_are_mapped_like_the_unpickler_does():
    assert scan_pickle(io.BytesIO(b"c__builtin__\nset\n(]tR."), SAFE) is None  # builtins.set
    assert (
        refused(b"\x80\x04c__builtin__\neval\n.") == "it references __builtin__.eval"
    )  # proto 4: no mapping


def test_a_global_built_at_load_time_is_refused():
    # builtins.str is allowed; str("os") made by REDUCE yields a string the scan cannot know.
    data = b"\x80\x04" + su("builtins") + su("str") + b"\x93" + su("os") + b"\x85R" + su("system") + b"\x93."
    assert "cannot read" in refused(data)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x80\x02\x82\x01.", "extension registry"),
        (b"\x80\x02Pkey\n.", "persistent ids"),
        (b"\x80\x05\x97.", "out-of-band buffers"),
        (b"\x80\x04\xff.", "unknown opcode"),
        (b"\x80\x04K\x01", "ends before its STOP"),
        (b"\x80\x04t.", "malformed"),
    ],
)
def test_what_cannot_be_checked_is_refused(data, reason):
    assert reason in refused(data)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/never",))


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_real_pickles_of_every_protocol(protocol):
    plain = {"a": [1, 2.5, "x" * 1000, b"y" * 300], "t": (1, 2, 3, 4), "s": {1}, "n": None, "big": 10**50}
    assert scan_pickle(io.BytesIO(pickle.dumps(plain, protocol=protocol)), SAFE) is None
    assert "system" in refused(pickle.dumps([plain, Evil()], protocol=protocol))


def test_function_under_a_trusted_prefix_is_refused_but_classes_pass():
    rule = trust_rule(["os"])
    stat = os.stat(".")
    assert pickle_problem(pickle.dumps(stat), rule) is None  # os.stat_result: a class
    why = pickle_problem(pickle.dumps(Evil()), trust_rule(["posix"]))
    assert (
        why is not None
        and why.startswith("it references posix.system (not a class")
        and "'posix.system'" in why
    )
    assert pickle_problem(pickle.dumps(Evil()), trust_rule(["posix.system"])) is None  # named one by one


def test_unimportable_trusted_module_is_refused_with_the_reason():
    data = b"\x80\x04" + su("nosuchpkg.mod") + su("Thing") + b"\x93."
    why = pickle_problem(data, trust_rule(["nosuchpkg"]))
    assert why is not None and "cannot be imported here" in why


def test_deep_stacks_are_bounded():
    assert "too deep" in refused(b"\x80\x04(" + b"N" * (MAX_STACK + 1) + b"t.")


def test_a_gzip_bomb_is_scanned_in_flat_memory():
    """1 GiB of zeros inside one BINBYTES8: streamed through gzip, skipped, never held."""
    size = 1 << 30
    header = b"\x80\x04\x8e" + struct.pack("<Q", size)
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=1) as out:
        out.write(header)
        zeros = bytes(1 << 24)
        for _ in range(size // len(zeros)):
            out.write(zeros)
        out.write(b".")
    compressed.seek(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert pickle_problem(gzip.GzipFile(fileobj=compressed), SAFE) is None
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"peak RSS grew {grown_kib} KiB while scanning"

"""Which globals a pickle would load, read from a stream without building a single object.

`scan_pickle` walks the opcodes and keeps a symbolic stack: strings whose value is known (small ones),
marks, and opaque items. Every global the real unpickler could resolve — `GLOBAL`, `INST`, and
`STACK_GLOBAL` whose two strings come from the stack or the memo — is checked against `allowed`. A global
the scan cannot name, the copyreg extension registry, persistent ids and out-of-band buffers are refused.
Memory stays bounded whatever the pickle's size: large arguments are skipped, not read into memory.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import pickletools
import re
from collections.abc import Callable
from typing import IO

#: Dotted names up to this length are kept as known strings (module and class names are far shorter).
MAX_NAME = 128
#: Bounds on the symbolic stack, on the bytes of strings the memo keeps, and on sparse memo keys.
MAX_STACK = 1 << 20
MEMO_STRING_BUDGET = 64 << 20
MAX_SPARSE_MEMO_KEYS = 1 << 20
MAX_LINE = 1 << 16
SKIP_CHUNK = 1 << 20

#: What a module or (qualified) class name looks like; other strings are opaque to the scan.
_DOTTED_NAME = re.compile(r"[A-Za-z_][\w.]*")
_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_LENGTH_BYTES = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_STRING_OPS = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINSTRING", "SHORT_BINSTRING"}
_REFUSED = {
    "EXT1": "it uses the copyreg extension registry",
    "EXT2": "it uses the copyreg extension registry",
    "EXT4": "it uses the copyreg extension registry",
    "PERSID": "it uses persistent ids",
    "BINPERSID": "it uses persistent ids",
    "NEXT_BUFFER": "it uses out-of-band buffers",
    "READONLY_BUFFER": "it uses out-of-band buffers",
}


class PickleRefused(Exception):
    """The pickle may not be loaded on the launcher; the message says why."""


class _Mark:
    pass


class _Opaque:
    """Any item whose value the scan does not track (numbers, containers, objects, long strings)."""


MARK = _Mark()
OPAQUE = _Opaque()


class _Str(str):
    """A string item whose value is known."""


def _read(stream: IO[bytes], count: int) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise PickleRefused("it is truncated")
    return data


def _skip(stream: IO[bytes], count: int) -> None:
    while count > 0:
        chunk = stream.read(min(count, SKIP_CHUNK))
        if not chunk:
            raise PickleRefused("it is truncated")
        count -= len(chunk)


def _line(stream: IO[bytes]) -> bytes:
    line = stream.readline(MAX_LINE)
    if not line.endswith(b"\n"):
        raise PickleRefused("it has an over-long or unterminated text argument")
    return line[:-1]


class _Memo:
    """The memo's size (what MEMOIZE numbers next) and the string values worth keeping."""

    def __init__(self) -> None:
        self.contiguous = 0  # keys 0 .. contiguous-1 are all set
        self.sparse: set[int] = set()
        self.strings: dict[int, _Str] = {}
        self.budget = MEMO_STRING_BUDGET

    def put(self, key: int, item: object) -> None:
        if key == self.contiguous:
            self.contiguous += 1
            while self.contiguous in self.sparse:
                self.sparse.discard(self.contiguous)
                self.contiguous += 1
        elif key > self.contiguous:
            self.sparse.add(key)
            if len(self.sparse) > MAX_SPARSE_MEMO_KEYS:
                raise PickleRefused("its memo is too large to check")
        if isinstance(item, _Str) and self.budget > 0:
            self.strings[key] = item
            self.budget -= len(item) + 64
        else:
            self.strings.pop(key, None)

    def size(self) -> int:
        return self.contiguous + len(self.sparse)

    def get(self, key: int) -> object:
        return self.strings.get(key, OPAQUE)


def _text(op: str, data: bytes) -> object:
    """The str a string opcode pushes (as `pickle.loads` with its defaults decodes it), or OPAQUE."""
    try:
        if op in ("BINSTRING", "SHORT_BINSTRING"):
            text = data.decode("ascii")
        else:
            text = data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return OPAQUE
    return _Str(text) if _DOTTED_NAME.fullmatch(text) else OPAQUE


def _protocol0_text(op: str, line: bytes) -> object:
    text = None
    try:
        if op == "UNICODE":
            text = line.decode("raw-unicode-escape")
        elif len(line) >= 2 and line[:1] == line[-1:] and line[:1] in b"\"'":
            text = codecs.escape_decode(line[1:-1])[0].decode("ascii")
    except (UnicodeDecodeError, ValueError):
        pass
    return (
        _Str(text) if text is not None and len(text) <= MAX_NAME and _DOTTED_NAME.fullmatch(text) else OPAQUE
    )


def _memo_key(op: str, value: object) -> int:
    """The memo index of a PUT/GET (decimal text) or BINPUT/BINGET and LONG_ variants (little-endian)."""
    if not isinstance(value, bytes):
        raise PickleRefused("it is malformed (memo key)")
    try:
        return int(value) if op in ("PUT", "GET") else int.from_bytes(value, "little")
    except ValueError:
        raise PickleRefused("it is malformed (memo key)")


def scan_pickle(stream: IO[bytes], allowed: Callable[[str, str], bool]) -> None:
    """Raise `PickleRefused` unless every global the pickle in `stream` names is `allowed(module, name)`."""
    stack: list[object] = []
    memo = _Memo()
    proto = 0

    def pop() -> object:
        if not stack:
            raise PickleRefused("it is malformed (stack underflow)")
        return stack.pop()

    def pop_mark() -> None:
        while True:
            if pop() is MARK:
                return

    def check(module: str, name: str) -> None:
        if proto < 3:  # as the unpickler maps Python 2 names (fix_imports)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if not allowed(module, name):
            raise PickleRefused(f"it references {module}.{name}")

    while True:
        code = stream.read(1)
        if not code:
            raise PickleRefused("it ends before its STOP opcode")
        op = _OPCODES.get(code)
        if op is None:
            raise PickleRefused(f"it has an unknown opcode {code!r}")
        name = op.name
        if name in _REFUSED:
            raise PickleRefused(_REFUSED[name])
        arg = op.arg
        value: object = None
        if name in ("GLOBAL", "INST"):
            module, attribute = (
                _line(stream).decode("utf-8", "replace"),
                _line(stream).decode("utf-8", "replace"),
            )
            check(module, attribute)
        elif arg is None:
            pass
        elif arg.n >= 0:
            value = _read(stream, arg.n)
        elif arg.n == pickletools.UP_TO_NEWLINE:
            value = _line(stream)
        else:
            width, signed = _LENGTH_BYTES[arg.n]
            length = int.from_bytes(_read(stream, width), "little", signed=signed)
            if length < 0:
                raise PickleRefused("it is malformed (negative length)")
            if name in _STRING_OPS and length <= MAX_NAME:
                value = _text(name, _read(stream, length))
            else:
                _skip(stream, length)
                value = OPAQUE

        if name == "STOP":
            return
        if name == "PROTO":
            proto = value[0] if isinstance(value, bytes) else 0
        elif name == "MARK":
            stack.append(MARK)
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            top = pop()
            stack += [top, top]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack or stack[-1] is MARK:
                raise PickleRefused("it is malformed (memoizes nothing)")
            key = memo.size() if name == "MEMOIZE" else _memo_key(name, value)
            if key < 0:
                raise PickleRefused("it is malformed (negative memo key)")
            memo.put(key, stack[-1])
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(_memo_key(name, value)))
        elif name == "STACK_GLOBAL":
            attribute_item, module_item = pop(), pop()
            if not isinstance(module_item, _Str) or not isinstance(attribute_item, _Str):
                raise PickleRefused("it names a global the check cannot read (built at load time)")
            check(str(module_item), str(attribute_item))
            stack.append(OPAQUE)
        elif name in ("UNICODE", "STRING"):
            stack.append(_protocol0_text(name, value))  # type: ignore[arg-type]
        elif name in _STRING_OPS:
            stack.append(value)
        else:
            before = op.stack_before
            if pickletools.markobject in before:
                pop_mark()
                for _ in range(before.index(pickletools.markobject)):
                    pop()
            else:
                for _ in before:
                    pop()
            stack += [OPAQUE] * len(op.stack_after)
        if len(stack) > MAX_STACK:
            raise PickleRefused("its stack is too deep to check")

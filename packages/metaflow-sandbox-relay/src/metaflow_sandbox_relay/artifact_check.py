"""Checking a sandboxed task's artifacts before anything on the launcher unpickles them.

Metaflow artifacts are pickles, and unpickling runs code: the runtime itself loads `_transition` and
friends of every task, and later steps load the rest. A pickle from a sandbox is checked by a
validation-only unpickler: every global it names must be on an allowlist, and allowed globals resolve
to an inert stand-in — nothing is imported or called. A pickle naming anything else is refused.
"""

from __future__ import annotations

import _compat_pickle
import gzip
import io
import json
import pickle
from collections.abc import Callable, Iterable
from typing import IO

#: Globals that plain data needs (containers, dates, numbers) and Metaflow's own bookkeeping artifacts.
SAFE_GLOBALS = frozenset(
    {
        *(("builtins", t) for t in ("list", "dict", "tuple", "str", "int", "float", "bytes", "bool")),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("builtins", "range"),
        ("builtins", "slice"),
        ("builtins", "object"),
        ("copyreg", "_reconstructor"),
        ("_codecs", "encode"),  # how protocol 2 writes bytes
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("collections", "deque"),
        ("collections", "Counter"),
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("fractions", "Fraction"),
        ("uuid", "UUID"),
        ("metaflow.flowspec", "ForeachFrame"),
        ("__main__", "ForeachFrame"),  # how a flow run as a script pickles its foreach frames
        ("metaflow.exception", "MetaflowExceptionWrapper"),
    }
)
CHUNK = 1 << 20


class _Inert:
    """Stands in for an allowed class or function: accepts any construction and state, runs nothing."""

    def __new__(cls, *args: object, **kwargs: object) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Inert:
        return _Inert()

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, item: object) -> None:
        pass

    def extend(self, items: Iterable[object]) -> None:
        pass

    def add(self, item: object) -> None:
        pass


class _ValidatingUnpickler(pickle.Unpickler):
    def __init__(self, stream: IO[bytes], allowed: Callable[[str, str], bool]):
        super().__init__(stream)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> object:
        # Protocol 0-2 pickles name Python 2 modules; map them as the standard unpickler does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if self._allowed(module, name):
            return _Inert
        raise pickle.UnpicklingError(f"it references {module}.{name}")

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("it uses persistent ids")


def trust_rule(trusted: Iterable[str] | str | None) -> Callable[[str, str], bool]:
    """Allowed globals: the safe set, plus every global of a module under a `trusted` prefix ("*" = all)."""
    if trusted == "*":
        return lambda module, name: True
    prefixes = tuple(trusted or ())

    def allowed(module: str, name: str) -> bool:
        if (module, name) in SAFE_GLOBALS:
            return True
        return any(module == p or module.startswith(p + ".") for p in prefixes)

    return allowed


def pickle_problem(data: bytes, allowed: Callable[[str, str], bool]) -> str | None:
    """Why `data` may not be unpickled on the launcher, or None when it is safe to."""
    try:
        _ValidatingUnpickler(io.BytesIO(data), allowed).load()
    except pickle.UnpicklingError as error:
        return str(error)
    except Exception as error:  # malformed input: refuse, whatever it is
        return f"it is not a valid pickle ({type(error).__name__}: {error})"
    return None


def artifact_problems(
    data_json: bytes,
    open_blob: Callable[[str], IO[bytes]],
    trusted: Iterable[str] | str | None = None,
    only: set[str] | None = None,
) -> list[str]:
    """Check the artifacts a task's `<attempt>.data.json` lists (those whose blob is in `only`, if given);
    `open_blob(sha)` reads one blob."""
    allowed = trust_rule(trusted)
    try:
        listing = json.loads(data_json)
        objects = dict(listing["objects"])
        info = dict(listing.get("info", {}))
    except (ValueError, KeyError, TypeError):
        return ["its data.json is not a Metaflow artifact listing"]
    problems = []
    for name, sha in sorted(objects.items()):
        if only is not None and sha not in only:
            continue
        encoding = str(info.get(name, {}).get("encoding", "pickle"))
        if "pickle" not in encoding:
            problems.append(f"artifact {name!r} has unknown encoding {encoding!r}")
            continue
        with open_blob(str(sha)) as stream:
            blob = stream.read()
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
        why = pickle_problem(blob, allowed)
        if why:
            problems.append(f"artifact {name!r} cannot be loaded safely: {why}")
    return problems

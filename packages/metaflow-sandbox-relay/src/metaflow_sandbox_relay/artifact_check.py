"""Checking a sandboxed task's artifacts before anything on the launcher unpickles them.

Metaflow artifacts are pickles, and unpickling runs code: the runtime itself loads `_transition` and
friends of every task, and later steps load the rest. A pickle from a sandbox is scanned, never loaded
(`pickle_scan`): every global it names must be on an allowlist, or the pickle is refused.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import zlib
from collections.abc import Callable, Iterable
from typing import IO

from .pickle_scan import PickleRefused, scan_pickle

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
#: Functions that rebuild common libraries' data (never arbitrary callables): admitted when their package is
#: in `trusted_types`, since a module prefix otherwise admits classes only.
KNOWN_RECONSTRUCTORS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas._libs.internals", "_unpickle_block"),
    }
)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def is_class(module: str, name: str) -> bool | str:
    """True when `module.name` is a class; False when it is anything else (a function, an instance); a
    string saying why when it cannot be told (the module does not import here)."""
    try:
        target: object = importlib.import_module(module)
    except Exception as error:  # whatever importing raises
        return f"{module} cannot be imported here to check it ({type(error).__name__}: {error})"
    for part in name.split("."):
        if part == "<locals>":
            return False
        try:
            target = getattr(target, part)
        except AttributeError:
            return f"{module} has no attribute {name}"
    return isinstance(target, type)


class TrustRule:
    """Which globals a step's artifacts may reference: `SAFE_GLOBALS`; every class of a module under a
    `trusted_types` prefix (not its functions: `pydantic.v1.utils.import_string("os.system")` is a gadget);
    an entry naming `module.name` exactly admits that one global, class or function; "*" admits all."""

    def __init__(self, trusted: Iterable[str] | str | None = None):
        self.everything = trusted == "*"
        self.entries: tuple[str, ...] = () if trusted is None or isinstance(trusted, str) else tuple(trusted)
        self._verdicts: dict[tuple[str, str], bool | str] = {}
        #: Why the last global was refused, beyond "it references ...".
        self.last_reason = ""

    def __call__(self, module: str, name: str) -> bool:
        self.last_reason = ""
        if self.everything or (module, name) in SAFE_GLOBALS:
            return True
        dotted = f"{module}.{name}"
        if dotted in self.entries:
            return True
        if not any(_under(module, entry) for entry in self.entries):
            return False
        if (module, name) in KNOWN_RECONSTRUCTORS:
            return True
        verdict = self._verdicts.get((module, name))
        if verdict is None:
            verdict = self._verdicts[(module, name)] = is_class(module, name)
        if verdict is True:
            return True
        if verdict is False:
            self.last_reason = (
                f" (not a class: a module in trusted_types admits its classes only; if {dotted} is safe to "
                f"call with any arguments, list it by name: trusted_types=[..., {dotted!r}])"
            )
        else:
            self.last_reason = f" ({verdict})"
        return False


def trust_rule(trusted: Iterable[str] | str | None) -> TrustRule:
    """The `TrustRule` for a step's `trusted_types`."""
    return TrustRule(trusted)


def pickle_problem(data: bytes | IO[bytes], allowed: Callable[[str, str], bool]) -> str | None:
    """Why the pickle in `data` (bytes or a stream) may not be unpickled on the launcher, or None."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        scan_pickle(stream, allowed)
    except PickleRefused as error:
        return f"{error}{getattr(allowed, 'last_reason', '')}"
    except (OSError, EOFError, zlib.error) as error:  # e.g. a damaged compressed stream
        return f"it cannot be read ({type(error).__name__}: {error})"
    return None


def open_artifact(stream: IO[bytes], raw: bool) -> IO[bytes]:
    """The bytes Metaflow unpickles from a stored blob: as stored (`cas_raw`), else gunzipped."""
    return stream if raw else gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]


def artifact_problems(
    data_json: bytes,
    open_blob: Callable[[str], IO[bytes]],
    trusted: Iterable[str] | str | None = None,
    only: set[str] | None = None,
) -> list[str]:
    """Check the artifacts a task's `<attempt>.data.json` lists (those whose blob is in `only`, if given);
    `open_blob(sha)` opens one blob as stored, seekable (gzip-compressed unless it starts otherwise)."""
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
            head = stream.read(2)
            stream.seek(0)
            why = pickle_problem(open_artifact(stream, head != b"\x1f\x8b"), allowed)
        if why:
            problems.append(f"artifact {name!r} cannot be loaded safely: {why}")
    return problems

"""Finding backends: the entry-point group `metaflow_sandbox.backends`, with install hints."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from importlib import metadata

from .backend import Backend
from .errors import BackendNotInstalledError, ConfigError, SandboxError

ENTRY_POINT_GROUP = "metaflow_sandbox.backends"

#: Backends this project ships, by name → the distribution that provides each.
KNOWN_BACKENDS = {
    "bubblewrap": "metaflow-sandbox-bubblewrap",
    "boxlite": "metaflow-sandbox-boxlite",
    "daytona": "metaflow-sandbox-daytona",
    "e2b": "metaflow-sandbox-e2b",
}

#: Backends whose SDK needs a newer Python than core does (their extra installs nothing on an older one).
MINIMUM_PYTHON = {"e2b": (3, 11)}


def install_hint(name: str) -> str:
    """The exact command that installs backend `name`."""
    return f'pip install "metaflow-sandbox[{name}]"'


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=ENTRY_POINT_GROUP)


def available_backends() -> dict[str, metadata.EntryPoint]:
    """Installed backends by name (first registration of a name wins)."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry_point in _entry_points():
        found.setdefault(entry_point.name, entry_point)
    return found


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as `name`; `ConfigError` naming the fix otherwise."""
    entry_point = available_backends().get(name)
    if entry_point is None:
        needed = MINIMUM_PYTHON.get(name)
        if needed is not None and sys.version_info[:2] < needed:
            raise BackendNotInstalledError(
                f"The {name!r} sandbox backend needs Python {'.'.join(map(str, needed))} or newer (its SDK "
                f"does); this is Python {sys.version_info[0]}.{sys.version_info[1]}. Run the flow with a newer "
                f"Python and {install_hint(name)}"
            )
        if name in KNOWN_BACKENDS:
            raise BackendNotInstalledError(
                f"The {name!r} sandbox backend is not installed. Install it with: {install_hint(name)}"
            )
        known = ", ".join(sorted(set(KNOWN_BACKENDS) | set(available_backends())))
        raise ConfigError(f"Unknown sandbox backend {name!r}. Choose one of: {known}.")
    cls = entry_point.load()
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(
            f"Entry point {entry_point.value!r} for backend {name!r} is not a "
            "metaflow_sandbox_core.Backend subclass."
        )
    return cls


def load_backend(name: str) -> Backend:
    """An instance of backend `name`."""
    return backend_class(name)()


def pick_default_backend(
    probe: Callable[[Backend], None] | None = None,
) -> tuple[str, str]:
    """The strongest-isolating local backend that works here: (name, why it was picked).

    Cloud backends are never picked automatically (they need an account). `probe` defaults to
    `Backend.check`. Raises `ConfigError` listing why each candidate was passed over.
    """
    candidates: list[tuple[int, str, Backend]] = []
    reasons: list[str] = []
    for name in sorted(available_backends()):
        try:
            backend = load_backend(name)
        except Exception as error:  # a broken third-party package must not stop the choice
            reasons.append(f"{name}: {error}")
            continue
        if backend.capabilities.local:
            candidates.append((int(backend.capabilities.isolation), name, backend))
    for _, name, backend in sorted(candidates, key=lambda c: (-c[0], c[1])):
        try:
            probe(backend) if probe is not None else backend.check()
        except SandboxError as error:
            reasons.append(f"{name}: {error}")
            continue
        return (
            name,
            f"strongest isolation that works on this machine ({backend.capabilities.isolation.name.lower()})",
        )
    detail = "; ".join(reasons) or "no local backend is installed"
    raise ConfigError(
        "No sandbox backend works on this machine "
        f"({detail}). Install one, e.g. {install_hint('bubblewrap')}, or set METAFLOW_SANDBOX_BACKEND."
    )

"""Decorator attributes → validated `SandboxOptions` (pure logic; no metaflow, no backend)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from metaflow_sandbox_core import ConfigError, NetworkPolicy, env_problem, parse_allow_list

from .attributes import ATTRIBUTE_DEFAULTS

#: `options={...}` keys this extension reads itself (next to the ones the backend declares).
EXTENSION_OPTION_KEYS = frozenset({"python"})


@dataclass(frozen=True)
class SandboxOptions:
    """What the user asked for, checked. Sizes in MiB, times in seconds; None = backend default."""

    backend: str | None = None
    image: str | None = None
    cpu: float | None = None
    memory_mb: int | None = None
    gpu: int | None = None
    disk_mb: int | None = None
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    network: NetworkPolicy | None = None  # None: what the datastore needs (nothing for the local one)
    #: `network=[...]`: destinations the step may reach besides its datastore (with network DATASTORE).
    egress_allow: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    #: Module prefixes whose classes the step's artifacts may contain ("*" = any pickle at all).
    trusted_types: tuple[str, ...] | str = ()


#: How errors name the "*" form. Metaflow prints errors with every `*` taken as a highlight marker (and
#: dropped), so a message holding the character would show '' to the user: say it in words.
EVERY_PICKLE = "to accept every pickle, set trusted_types to a one-character string, the asterisk"


def _shown(value: Any) -> str:
    """`value` as the user wrote it, with asterisks spelled out (they would vanish, see `EVERY_PICKLE`)."""
    return repr(value).replace("*", "<asterisk>")


def _number(name: str, value: Any, example: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{name}={_shown(value)} is not a number; use e.g. {example}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={_shown(value)} is not a number; use e.g. {example}.")
    if number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}={_shown(value)} is not a finite number; use e.g. {example}.")
    return number


def _positive(name: str, value: Any, example: str, *, allow_zero: bool = False) -> float | None:
    number = _number(name, value, example)
    if number is not None and (number < 0 or (number == 0 and not allow_zero)):
        raise ConfigError(f"{name}={value!r} must be greater than 0; use e.g. {example}.")
    return number


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):  # from --with sandbox:env='{"A": "1"}'
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a mapping; use e.g. {name}={{'KEY': 'value'}}.")
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}={value!r} is not a mapping; use e.g. {name}={{'KEY': 'value'}}.")
    return dict(value)


def _network(value: Any) -> tuple[NetworkPolicy | None, tuple[str, ...]]:
    """`network=` → (policy, allow-list): a policy name, or a list of destinations (filtered egress)."""
    if value is None or value == "":
        return None, ()
    if isinstance(value, str) and value.lstrip().startswith("["):  # from --with sandbox:network='["a.com"]'
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(
                f"network={_shown(value)} is not a JSON list; use e.g. network='[\"api.example.com:443\"]'."
            )
    try:
        if isinstance(value, (str, NetworkPolicy)):
            return NetworkPolicy.parse(value), ()
        return NetworkPolicy.DATASTORE, parse_allow_list(value)
    except ConfigError as error:  # Metaflow drops asterisks from printed errors: spell them out
        raise ConfigError(str(error).replace("*", "<asterisk>")) from None


def _trusted_types(value: Any) -> tuple[str, ...] | str:
    if value in (None, "", [], ()):
        return ()
    if value == "*":
        return "*"
    if isinstance(value, str):  # from --with sandbox:trusted_types=numpy,pandas
        value = [part.strip().strip("'\"") for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"trusted_types={_shown(value)} must be a list of module names, e.g. trusted_types=['numpy', "
            f"'pandas']; {EVERY_PICKLE}."
        )
    entries = list(value)
    if entries == ["*"]:
        return "*"
    names = [entry for entry in entries if entry != "*"]
    for entry in names:
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(
                f"trusted_types={_shown(value)}: {_shown(entry)} is not a module name; list module names, e.g. "
                f"trusted_types=['numpy', 'pandas']; {EVERY_PICKLE}."
            )
        if "*" in entry:
            base = entry.replace("*", "").strip(".") or "numpy"
            raise ConfigError(
                f"trusted_types={_shown(value)}: a module name is already a prefix (it covers its submodules) "
                f"and takes no wildcard; write {base!r}."
            )
        if not all(part.isidentifier() for part in entry.split(".")):
            raise ConfigError(
                f"trusted_types={_shown(value)}: {entry!r} is not a module name (like 'numpy' or "
                "'pandas.core.frame'); list modules, or 'module.Name' for one class or function."
            )
    if len(names) < len(entries):
        raise ConfigError(
            f"trusted_types={_shown(value)}: the asterisk accepts every pickle on its own and cannot be combined "
            f"with module names; keep only the modules (trusted_types={names!r}), or {EVERY_PICKLE} alone."
        )
    return tuple(entries)


def check_env(env: Mapping[Any, Any], where: str) -> None:
    """`ConfigError` naming the fix for a variable that cannot be passed into a sandbox (`where` names the
    setting, e.g. "env" or "@environment(vars=...)")."""
    for key, value in env.items():
        problem = env_problem(key, value)
        if problem:
            raise ConfigError(f"{where}[{key!r}]: {problem}.")


def parse_options(attributes: Mapping[str, Any]) -> SandboxOptions:
    """Validate decorator attributes; raise `ConfigError` naming the fix."""
    unknown = set(attributes) - set(ATTRIBUTE_DEFAULTS)
    if unknown:
        raise ConfigError(
            f"Unknown sandbox attribute(s) {sorted(unknown)}; backend-specific settings go in options={{...}}."
        )
    env = _mapping("env", attributes.get("env"))
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(
                f"env[{key!r}]={value!r}: environment values must be strings; use env={{{key!r}: {str(value)!r}}}."
            )
    check_env(env, "env")
    memory = _positive("memory", attributes.get("memory"), "memory=4096 (MiB)")
    disk = _positive("disk", attributes.get("disk"), "disk=10240 (MiB)")
    gpu = _positive("gpu", attributes.get("gpu"), "gpu=1", allow_zero=True)
    network, egress_allow = _network(attributes.get("network"))
    return SandboxOptions(
        backend=attributes.get("backend") or None,
        image=attributes.get("image") or None,
        cpu=_positive("cpu", attributes.get("cpu"), "cpu=2"),
        memory_mb=int(memory) if memory is not None else None,
        gpu=int(gpu) if gpu else None,
        disk_mb=int(disk) if disk is not None else None,
        timeout=_positive("timeout", attributes.get("timeout"), "timeout=3600 (seconds)"),
        env=env,
        network=network,
        egress_allow=egress_allow,
        options=_mapping("options", attributes.get("options")),
        trusted_types=_trusted_types(attributes.get("trusted_types")),
    )

"""`SandboxNetwork`: what an emulated sandbox's commands may reach, from the egress policy its provider was sent.

No policy (`allow=None`): the host's network, as before (the providers' default is full egress). A policy: each
command runs under `bwrap --unshare-net --unshare-pid` with the host's root bound whole, so it has an empty
network namespace (loopback only). With an allow-list, core's `EgressProxy` listens on a unix socket of this
sandbox's own and allows exactly those entries (any port, as the providers filter by host); core's forwarder
relays 127.0.0.1:3128 inside to it and `HTTP(S)_PROXY` point there, as with bubblewrap. An empty list is no
network at all. The providers filter at their network layer; here only clients that honour the proxy variables
get out and everything else fails (never wider). Every command has namespaces of its own: what it leaves running
ends with it, and a server one command starts is not on another's loopback.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence

from metaflow_sandbox_core import ConfigError, parse_destination
from metaflow_sandbox_core.egress_forwarder import SOCKET_NAME, forwarder_argv, proxy_env
from metaflow_sandbox_core.egress_proxy import EgressProxy, EgressRules

BWRAP = shutil.which("bwrap") or "bwrap"


def allow_list(entries: Sequence[object]) -> tuple[str, ...]:
    """A provider's allow-list as entries the proxy enforces; `ValueError` (the emulator's 400) for one it
    cannot parse."""
    checked: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"allow-list entry {entry!r} is not a string")
        try:
            parse_destination(entry)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        checked.append(entry)
    return tuple(checked)


class SandboxNetwork:
    """The network of one emulated sandbox; `close()` stops its proxy and removes its socket."""

    def __init__(self, allow: Sequence[str] | None):
        self.allow = None if allow is None else tuple(allow)
        self.proxy: EgressProxy | None = None
        self.directory: str | None = None
        if self.allow:
            rules = EgressRules(self.allow)  # entries checked by `allow_list`
            # Under /tmp: a unix socket path has at most 107 bytes.
            self.directory = tempfile.mkdtemp(prefix="mfs-emu-egress-", dir="/tmp")
            try:
                self.proxy = EgressProxy(os.path.join(self.directory, SOCKET_NAME), rules)
            except BaseException:
                shutil.rmtree(self.directory, ignore_errors=True)
                raise

    @property
    def isolated(self) -> bool:
        return self.allow is not None

    def namespaces(self) -> list[str]:
        """bwrap's options for an empty network namespace (and a pid namespace the forwarder dies with)."""
        return ["--unshare-net", "--unshare-pid", "--die-with-parent"] if self.isolated else []

    def binds(self) -> list[str]:
        """bwrap's options that make the proxy's socket reachable (after any bind that could hide it)."""
        return ["--ro-bind", self.directory, self.directory] if self.directory else []

    def command(self, argv: list[str]) -> list[str]:
        """`argv` behind the forwarder when there is a proxy."""
        if self.proxy is None:
            return argv
        return forwarder_argv(argv, self.proxy.socket_path)

    def wrap(self, argv: list[str]) -> list[str]:
        """A plain local command's argv: unchanged without a policy, else in its empty network namespace."""
        if not self.isolated:
            return argv
        return [BWRAP, *self.namespaces(), "--dev-bind", "/", "/", *self.binds(), "--", *self.command(argv)]

    def env(self) -> dict[str, str]:
        """The proxy variables (empty without a proxy)."""
        return proxy_env() if self.proxy is not None else {}

    def to_json(self) -> dict[str, object]:
        """For the admin API: the allow-list enforced (None: the host's network) and what the proxy refused."""
        return {
            "allow": None if self.allow is None else list(self.allow),
            "refused": list(self.proxy.refused) if self.proxy is not None else [],
            "socket": self.proxy.socket_path if self.proxy is not None else None,
        }

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

"""`SandboxEgress`: filtered egress of one sandbox (`NetworkPolicy.DATASTORE`): core's proxy, its socket's bind
and how each command is started behind core's forwarder. Lives as long as the `BubblewrapSandbox` (in the
launcher: the task process or the warm sandbox host)."""

from __future__ import annotations

import os
import shutil
import tempfile

from metaflow_sandbox_core import ConfigError, NetworkPolicy, SandboxSpec
from metaflow_sandbox_core.egress_forwarder import (
    FORWARDER_PYTHON,
    SOCKET_DIR,
    SOCKET_NAME,
    forwarder_argv,
    proxy_env,
)
from metaflow_sandbox_core.egress_proxy import EgressProxy, EgressRules

from .layout import Bind, SandboxUser


def check_forwarder(spec: SandboxSpec) -> None:
    """`ConfigError` when filtered egress is asked for and the forwarder's interpreter is missing."""
    if spec.network is NetworkPolicy.DATASTORE and not os.access(FORWARDER_PYTHON, os.X_OK):
        raise ConfigError(
            f"network={spec.network.value!r} on bubblewrap needs {FORWARDER_PYTHON} on this machine (it runs "
            "the in-sandbox forwarder to the egress proxy); install python3, or use network='none' or 'full'."
        )


#: The longest unix socket path this module uses (the kernel's limit is 107 bytes).
MAX_SOCKET_PATH = 100


class SandboxEgress:
    """The proxy for `spec.network_allow` (the datastore's endpoints) plus `spec.egress_allow` (the step's)."""

    def __init__(self, directory: str, proxy: EgressProxy):
        self.directory = directory
        self.proxy = proxy

    @classmethod
    def start(cls, spec: SandboxSpec, user: SandboxUser, host_dir: str) -> SandboxEgress | None:
        if spec.network is not NetworkPolicy.DATASTORE:
            return None
        check_forwarder(spec)
        rules = EgressRules([*spec.network_allow, *spec.egress_allow])
        # In the sandbox's host directory (removed with it, also by `destroy` from another process) unless the
        # path is too long for a unix socket (107 bytes): then a private directory under /tmp.
        directory = os.path.join(host_dir, "egress")
        if len(os.path.join(directory, SOCKET_NAME)) <= MAX_SOCKET_PATH:
            os.mkdir(directory, 0o700)
        else:
            directory = tempfile.mkdtemp(prefix="mfs-egress-", dir="/tmp" if os.path.isdir("/tmp") else None)
        try:
            proxy = EgressProxy(os.path.join(directory, SOCKET_NAME), rules)
            user.give(directory)  # 0700: only the sandbox's user (and the launcher) reach the socket
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls(directory, proxy)

    def binds(self) -> tuple[Bind, ...]:
        return (Bind(self.directory, SOCKET_DIR, read_only=True),)

    def wrap(self, argv: list[str]) -> list[str]:
        return forwarder_argv(argv)

    def env(self) -> dict[str, str]:
        return proxy_env()

    @property
    def refused(self) -> list[str]:
        """What the proxy refused so far (one line each)."""
        return list(self.proxy.refused)

    def close(self) -> None:
        self.proxy.close()
        shutil.rmtree(self.directory, ignore_errors=True)

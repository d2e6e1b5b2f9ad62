"""A backend with no isolation at all, for testing core's shared machinery: commands are host processes
(`PipeCommand`), files live in a private temporary directory. Never use it for anything else."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping

from metaflow_sandbox_core import (
    Backend,
    Capabilities,
    Isolation,
    PipeCommand,
    Sandbox,
    SandboxInfo,
    SandboxSpec,
    labels_match,
)


class LocalSandbox(Sandbox):
    def __init__(self, backend: LocalBackend, spec: SandboxSpec):
        self.root = tempfile.mkdtemp(prefix="local-sandbox-")
        super().__init__(os.path.basename(self.root), spec)
        self.backend = backend
        self.destroy_calls = 0
        backend.live[self.id] = self

    @property
    def workdir(self) -> str:
        return self.root

    def _start(self, argv: list[str], env: dict[str, str], cwd: str) -> PipeCommand:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        return PipeCommand(process)

    def _write_file(self, path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as file:
            file.write(data)

    def _read_file(self, path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    def _destroy(self) -> None:
        self.destroy_calls += 1
        for command in self.running_commands():
            command.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        self.backend.live.pop(self.id, None)


class LocalBackend(Backend):
    name = "local-test"
    capabilities = Capabilities(isolation=Isolation.NAMESPACES, local=True, can_mount=False)

    def __init__(self, state_dir: str | None = None):
        self.state_dir = state_dir
        self.live: dict[str, LocalSandbox] = {}
        self.created = 0

    def _create(self, spec: SandboxSpec) -> LocalSandbox:
        self.created += 1
        return LocalSandbox(self, spec)

    def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        return [
            SandboxInfo(s.id, s.spec.labels)
            for s in self.live.values()
            if labels_match(s.spec.labels, labels)
        ]

    def destroy(self, sandbox_id: str) -> None:
        sandbox = self.live.get(sandbox_id)
        if sandbox is not None:
            sandbox.destroy()

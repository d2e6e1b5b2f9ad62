"""A remote-only backend (it cannot mount host paths) that records what it was asked to create."""

from metaflow_sandbox_core import Backend, Capabilities, Isolation, UnavailableError


class TinyBackend(Backend):
    name = "tiny"
    capabilities = Capabilities(isolation=Isolation.CONTAINER, local=False, can_mount=False)

    def _create(self, spec):
        raise UnavailableError("tiny backend never creates sandboxes", retryable=False)

    def list(self, labels=None):
        return []

    def destroy(self, sandbox_id):
        pass

"""metaflow-sandbox backend that runs steps in boxlite micro-VMs: a local runtime (KVM / Hypervisor.framework),
or a remote boxlite REST server when BOXLITE_REST_URL is set (the `boxlite` SDK is imported lazily)."""

from .backend import BoxliteBackend
from .sandbox import BoxliteSandbox

__version__ = "0.1.0"

__all__ = ["BoxliteBackend", "BoxliteSandbox", "__version__"]

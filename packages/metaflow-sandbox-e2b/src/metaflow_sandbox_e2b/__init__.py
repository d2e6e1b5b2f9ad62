"""metaflow-sandbox backend that runs steps in E2B cloud sandboxes (the `e2b` SDK is imported lazily)."""

from .backend import E2BBackend
from .sandbox import E2BSandbox

__version__ = "0.1.0"

__all__ = ["E2BBackend", "E2BSandbox", "__version__"]

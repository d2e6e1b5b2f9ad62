"""metaflow-sandbox backend that runs steps in Daytona cloud sandboxes (the `daytona` SDK is imported lazily)."""

from .backend import DaytonaBackend
from .sandbox import DaytonaSandbox

__version__ = "0.1.0"

__all__ = ["DaytonaBackend", "DaytonaSandbox", "__version__"]

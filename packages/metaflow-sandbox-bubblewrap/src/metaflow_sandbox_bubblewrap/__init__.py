"""metaflow-sandbox backend that runs steps in Linux namespace sandboxes made with bubblewrap (`bwrap`)."""

from .backend import BubblewrapBackend
from .sandbox import BubblewrapSandbox

__version__ = "0.1.0"

__all__ = ["BubblewrapBackend", "BubblewrapSandbox", "__version__"]

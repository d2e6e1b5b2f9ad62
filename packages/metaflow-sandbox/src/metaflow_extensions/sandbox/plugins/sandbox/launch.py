"""The light launcher: `python -m metaflow_extensions.sandbox.plugins.sandbox.launch [argv of flow.py]`.

The Metaflow runtime spawns this instead of `python flow.py sandbox step ...`: same argv, but it does not
import metaflow or the flow (~0.3 s saved per task).
"""

import sys

from .executor import launch_from_argv

if __name__ == "__main__":
    sys.exit(launch_from_argv(sys.argv[1:]))

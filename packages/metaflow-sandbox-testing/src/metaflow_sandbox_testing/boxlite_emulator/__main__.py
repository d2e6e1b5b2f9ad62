"""`python -m metaflow_sandbox_testing.boxlite_emulator --port N [--api-key K] [--prefix P] [--python PATH]
[--faults JSON]`

Prints the URL (use it as BOXLITE_REST_URL) on its first line of output, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import sys

from ..emulator_cli import run_emulator
from .app import serve


def main(argv: list[str] | None = None) -> int:
    return run_emulator(
        serve,
        module="metaflow_sandbox_testing.boxlite_emulator",
        name="boxlite",
        description="A local emulator of boxlite's REST API, for the real boxlite SDK.",
        api_key_help="the only accepted Bearer token (default: any)",
        sandbox_word="boxes",
        extra=[
            (["--prefix"], {"default": None, "help": "routing slot of box URLs (BOXLITE_REST_PATH_PREFIX)"})
        ],
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())

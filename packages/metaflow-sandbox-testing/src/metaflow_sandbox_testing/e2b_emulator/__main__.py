"""`python -m metaflow_sandbox_testing.e2b_emulator --port N [--api-key K] [--python PATH] [--faults JSON]`

Prints the URL (use it as both E2B_API_URL and E2B_SANDBOX_URL) on its first line, then serves until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import sys

from ..emulator_cli import run_emulator
from .app import serve


def main(argv: list[str] | None = None) -> int:
    return run_emulator(
        serve,
        module="metaflow_sandbox_testing.e2b_emulator",
        name="E2B",
        description="A local emulator of E2B's API and envd, for the real e2b SDK.",
        api_key_help="the only accepted X-API-KEY (default: any)",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())

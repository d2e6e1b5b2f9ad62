"""`python -m metaflow_sandbox_testing.daytona_emulator --port N [--api-key K] [--python PATH] [--host-path DIR]
[--faults JSON]`

Prints the API URL (use it as DAYTONA_API_URL) on its first line of output, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import sys

from ..emulator_cli import Argument, run_emulator
from .app import serve

EXTRA: list[Argument] = [
    (["--state-dir"], {"default": None, "help": "where sandbox directories live (default: a temp dir)"}),
    (
        ["--host-path"],
        {
            "dest": "host_paths",
            "action": "append",
            "default": [],
            "help": "an absolute directory (e.g. /tmp) the file API may reach besides each sandbox's home "
            "(repeatable)",
        },
    ),
]


def main(argv: list[str] | None = None) -> int:
    return run_emulator(
        serve,
        module="metaflow_sandbox_testing.daytona_emulator",
        name="Daytona",
        description="A local emulator of Daytona's API and toolbox, for the real daytona SDK.",
        api_key_help="the only accepted Bearer key (default: any)",
        extra=EXTRA,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())

"""`python -m metaflow_sandbox_testing.daytona_emulator --port N [--api-key K] [--python PATH] [--host-path DIR]
[--faults JSON]`

Prints the API URL (use it as DAYTONA_API_URL) on its first line of output, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .app import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metaflow_sandbox_testing.daytona_emulator",
        description="A local emulator of Daytona's API and toolbox, for the real daytona SDK.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--api-key", default=None, help="the only accepted Bearer key (default: any)")
    parser.add_argument("--python", default=None, help="interpreter run by `python3`/`python` in sandboxes")
    parser.add_argument(
        "--state-dir", default=None, help="where sandbox directories live (default: a temp dir)"
    )
    parser.add_argument(
        "--host-path",
        action="append",
        default=[],
        help="an absolute directory (e.g. /tmp) the file API may reach besides each sandbox's home (repeatable)",
    )
    parser.add_argument("--faults", default=None, help="initial fault knobs as a JSON object")
    args = parser.parse_args(argv)
    faults = json.loads(args.faults) if args.faults else None

    def ready(url: str) -> None:
        print(f"Daytona emulator listening on {url}", flush=True)

    asyncio.run(
        serve(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            python=args.python,
            state_dir=args.state_dir,
            faults=faults,
            host_paths=args.host_path,
            on_ready=ready,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

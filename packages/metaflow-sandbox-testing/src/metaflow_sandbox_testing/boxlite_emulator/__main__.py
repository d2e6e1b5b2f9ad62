"""`python -m metaflow_sandbox_testing.boxlite_emulator --port N [--api-key K] [--prefix P] [--python PATH]
[--faults JSON]`

Prints the URL (use it as BOXLITE_REST_URL) on its first line of output, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .app import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metaflow_sandbox_testing.boxlite_emulator",
        description="A local emulator of boxlite's REST API, for the real boxlite SDK.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--api-key", default=None, help="the only accepted Bearer token (default: any)")
    parser.add_argument("--prefix", default=None, help="routing slot of box URLs (BOXLITE_REST_PATH_PREFIX)")
    parser.add_argument("--python", default=None, help="interpreter run by `python3`/`python` in boxes")
    parser.add_argument("--faults", default=None, help="initial fault knobs as a JSON object")
    args = parser.parse_args(argv)

    def ready(url: str) -> None:
        print(f"boxlite emulator listening on {url}", flush=True)

    faults = json.loads(args.faults) if args.faults else None
    asyncio.run(
        serve(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            prefix=args.prefix,
            python=args.python,
            faults=faults,
            on_ready=ready,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command line every emulator module shares: `python -m <module> --port N [--api-key K] [--python PATH]
[--faults JSON] ...`, printing its URL on the first line of output, then serving until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

#: (flags, argparse options) of an argument only one emulator has; `dest` must name its `serve` parameter.
Argument = tuple[Sequence[str], dict[str, Any]]


def run_emulator(
    serve: Callable[..., Coroutine[Any, Any, None]],
    *,
    module: str,
    name: str,
    description: str,
    api_key_help: str,
    sandbox_word: str = "sandboxes",
    extra: Sequence[Argument] = (),
    argv: list[str] | None = None,
) -> int:
    """Parse the emulator's arguments and run `serve(host=, port=, api_key=, python=, faults=, on_ready=, ...)`."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--api-key", default=None, help=api_key_help)
    parser.add_argument(
        "--python", default=None, help=f"interpreter run by `python3`/`python` in {sandbox_word}"
    )
    parser.add_argument("--faults", default=None, help="initial fault knobs as a JSON object")
    for flags, options in extra:
        parser.add_argument(*flags, **options)
    arguments = vars(parser.parse_args(argv))
    faults = arguments.pop("faults")

    def ready(url: str) -> None:
        print(f"{name} emulator listening on {url}", flush=True)

    asyncio.run(serve(**arguments, faults=json.loads(faults) if faults else None, on_ready=ready))
    return 0

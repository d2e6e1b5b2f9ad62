"""`--environment=pypi` / `--environment=conda` (@pypi, @conda) for sandboxed steps.

Metaflow resolves and builds these environments on the launcher (`init_environment`, with micromamba). A
backend that shares this machine's userland (bubblewrap) runs the step with that environment's interpreter,
its prefix mounted read-only: nothing installs per task and nothing inside reaches an index. Remote backends
would need Metaflow's `bootstrap_commands` (fetching the environment from `<sysroot>/conda`) run by the sandbox's
bootstrap: not wired yet, so such a step is refused before any sandbox exists.

Metaflow's conda decorator points the task's entrypoint at that interpreter unless it sees @batch/@kubernetes;
`keep_sandbox_entrypoint` makes sure a sandboxed task still goes through the sandbox launcher.
"""

from __future__ import annotations

from typing import Any

from metaflow_sandbox_core import ConfigError

ENVIRONMENT_TYPES = ("conda", "pypi")
DECORATORS = ("conda", "pypi")
SANDBOX_COMMANDS = ["sandbox", "step"]


def uses_environment(environment: Any, flow: Any, step: str) -> bool:
    """Whether `step` runs in a Metaflow-built @conda/@pypi environment."""
    if getattr(environment, "TYPE", None) not in ENVIRONMENT_TYPES:
        return False
    graph_step = next((s for s in flow if s.name == step), None)
    return graph_step is not None and not environment.is_disabled(graph_step)


def check_backend(backend: str, runs_on_this_machine: bool) -> None:
    if not runs_on_this_machine:
        raise ConfigError(
            "@pypi/@conda steps cannot run on the %r backend yet (only bubblewrap, which shares this machine, "
            "runs them); declare the step's dependencies in pyproject.toml and uv.lock and run with "
            "--environment=uv." % backend
        )


def keep_sandbox_entrypoint(decos: list[Any]) -> None:
    """Stop @conda/@pypi from replacing a sandboxed task's entrypoint with the environment's interpreter
    (whichever order the decorators' `runtime_step_cli` hooks run in)."""
    for deco in decos:
        if deco.name not in DECORATORS or getattr(deco, "_sandbox_entrypoint_kept", False):
            continue
        original = deco.runtime_step_cli

        def runtime_step_cli(cli_args: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            ours = list(cli_args.entrypoint) if cli_args.commands == SANDBOX_COMMANDS else None
            _original(cli_args, *args, **kwargs)
            if ours is not None:  # the sandbox decorator ran first: its launcher stays the entrypoint
                cli_args.entrypoint = ours

        deco.runtime_step_cli = runtime_step_cli
        deco._sandbox_entrypoint_kept = True

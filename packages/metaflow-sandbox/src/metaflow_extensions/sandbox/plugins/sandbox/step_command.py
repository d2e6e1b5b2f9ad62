"""Turning the trampoline's argv into the inner `step` command (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass

TRAMPOLINE = ("sandbox", "step")
LAUNCH_OPTION = "--sandbox-launch"


@dataclass(frozen=True)
class StepCommand:
    """The parts of `<flow.py> [top-level options] sandbox step STEP [options]`."""

    top_level: list[str]
    step: str
    options: list[str]
    launch_path: str

    def inner_argv(self, flow_path: str) -> list[str]:
        """argv (after the interpreter) of the real step, run with local metadata inside the sandbox."""
        top = list(self.top_level)
        for i, token in enumerate(top[:-1]):
            if token == "--metadata":
                top[i + 1] = "local"
        return ["-u", flow_path, *top, "step", self.step, *self.options]

    def option_value(self, name: str) -> str | None:
        for i, token in enumerate(self.top_level[:-1]):
            if token == name:
                return self.top_level[i + 1]
        return None


def parse_step_command(argv: list[str]) -> StepCommand:
    """Split the trampoline's argv (without interpreter and script) at `sandbox step STEP`."""
    for i in range(len(argv) - 2):
        if (argv[i], argv[i + 1]) == TRAMPOLINE:
            top, step, rest = argv[:i], argv[i + 2], argv[i + 3 :]
            break
    else:
        raise ValueError("expected `... sandbox step STEP ...` in the command line")
    options: list[str] = []
    launch_path = None
    tokens = iter(rest)
    for token in tokens:
        if token == LAUNCH_OPTION:
            launch_path = next(tokens, None)
        else:
            options.append(token)
    if not launch_path:
        raise ValueError(f"missing {LAUNCH_OPTION} PATH")
    return StepCommand(top_level=top, step=step, options=options, launch_path=launch_path)

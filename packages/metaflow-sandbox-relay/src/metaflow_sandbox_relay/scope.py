"""Which task a relay accepts results for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskScope:
    """The one (flow, run, step, task, attempt) a sandbox was launched for."""

    flow: str
    run_id: str
    step: str
    task_id: str
    attempt: int

    @property
    def task_path(self) -> tuple[str, str, str, str]:
        return (self.flow, self.run_id, self.step, self.task_id)

    def __str__(self) -> str:
        return "/".join(self.task_path) + f" (attempt {self.attempt})"


class RelayRefusedError(Exception):
    """The sandbox produced something outside its scope or bounds; nothing was applied."""

    def __init__(self, scope: TaskScope, problems: list[str]):
        self.scope = scope
        self.problems = problems
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__(f"the relay refused the results of {scope}: {shown}")

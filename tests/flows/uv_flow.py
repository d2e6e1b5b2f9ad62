"""A sandboxed foreach whose steps import a locked dependency (`--environment=uv`) that only the sandbox has."""

import importlib.util
import os

from metaflow import FlowSpec, sandbox, step


class UvFlow(FlowSpec):
    @step
    def start(self):
        self.launcher_has_it = importlib.util.find_spec("humanize") is not None
        self.items = [1, 2, 3]
        self.next(self.inside, foreach="items")

    @sandbox
    @step
    def inside(self):
        import humanize

        self.words = humanize.intcomma(1000 * self.input)
        self.in_sandbox = bool(os.environ.get("METAFLOW_SANDBOX_STAGING"))  # set only inside a sandbox
        self.module = humanize.__file__
        self.next(self.join)

    @step
    def join(self, inputs):
        self.results = sorted((i.words, i.in_sandbox, i.module) for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UvFlow()

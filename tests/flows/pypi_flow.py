"""A sandboxed step with @pypi (or @conda): its dependency comes from the environment Metaflow built."""

import os

from metaflow import FlowSpec, pypi, sandbox, step

#: `--environment=conda` reads @pypi too (Metaflow maps it to a conda environment with pip packages).


class PypiFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.inside)

    @sandbox
    @pypi(packages={"humanize": "4.9.0"})
    @step
    def inside(self):
        import sys

        import humanize

        self.words = humanize.intcomma(1000)
        self.in_sandbox = bool(os.environ.get("METAFLOW_SANDBOX_STAGING"))  # set only inside a sandbox
        self.python = sys.executable
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    PypiFlow()

"""A sandboxed step with @pypi (or @conda): its dependency comes from the environment Metaflow built.

Tests write variants with `@sandbox` and `@pypi(` swapped for another backend's and `@conda(` (the decorators
must be the same inside the sandbox as on the launcher, so no environment switch)."""

import os

from metaflow import FlowSpec, conda, daytona, pypi, sandbox, step  # noqa: F401 - variants use them

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
        self.module = humanize.__file__
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    PypiFlow()

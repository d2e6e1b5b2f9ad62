"""@daytona + @conda: the step's dependency comes from the environment Metaflow resolved, built inside the
remote sandbox from the datastore's package cache."""

import os

from metaflow import FlowSpec, conda, daytona, step


class DaytonaCondaFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.inside)

    @daytona
    @conda(packages={"humanize": "4.9.0"})
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
    DaytonaCondaFlow()

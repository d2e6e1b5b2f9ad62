"""A foreach of sandboxed branches and a join."""

import os

from metaflow import FlowSpec, Parameter, sandbox, step


class ForeachFlow(FlowSpec):
    width = Parameter("width", default=20)
    nap = Parameter("nap", default=0.0)
    fail_at = Parameter("fail-at", default=-1)

    @step
    def start(self):
        self.items = list(range(int(self.width)))
        self.next(self.branch, foreach="items")

    @sandbox
    @step
    def branch(self):
        import time

        print("branch", self.input, "pid", os.getpid(), flush=True)
        time.sleep(float(self.nap))
        if self.input == int(self.fail_at):
            raise RuntimeError("failing split %d on purpose" % self.input)
        self.square = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.square for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total)


if __name__ == "__main__":
    ForeachFlow()

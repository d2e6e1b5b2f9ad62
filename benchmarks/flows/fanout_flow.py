"""P1: a foreach whose branches run sandboxed when BENCH_SANDBOX=1, plain otherwise."""

import os

from metaflow import FlowSpec, Parameter, sandbox, step

maybe_sandbox = sandbox if os.environ.get("BENCH_SANDBOX") == "1" else (lambda f: f)


class FanoutFlow(FlowSpec):
    width = Parameter("width", default=20)

    @step
    def start(self):
        self.items = list(range(int(self.width)))
        self.next(self.branch, foreach="items")

    @maybe_sandbox
    @step
    def branch(self):
        self.out = self.input * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.out for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FanoutFlow()

"""The side-by-side flow: a foreach of `width` @daytona steps, then one @daytona step printing timestamped
lines every 100 ms for 5 s. Runs unchanged under this project and under the predecessor (both register
`@daytona` and `@e2b`: side_by_side.py writes it with the backend's decorator); the baseline is this file with
its decorator lines removed (the decorators must be the same inside the sandbox as on the launcher, so no
environment switch)."""

import time

from metaflow import FlowSpec, Parameter, daytona, step


class SideBySideFlow(FlowSpec):
    width = Parameter("width", default=20)

    @step
    def start(self):
        self.items = list(range(int(self.width)))
        self.next(self.branch, foreach="items")

    @daytona
    @step
    def branch(self):
        self.out = self.input * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.out for i in inputs)
        self.next(self.talk)

    @daytona
    @step
    def talk(self):
        for _ in range(50):
            print(f"BENCH_TS={time.time():.6f}", flush=True)
            time.sleep(0.1)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SideBySideFlow()

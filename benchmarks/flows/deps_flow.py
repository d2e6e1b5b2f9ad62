"""P8: a sandboxed foreach whose branches import a locked dependency (`--environment=uv --deps True`) or not."""

from metaflow import FlowSpec, Parameter, sandbox, step


class DepsFlow(FlowSpec):
    width = Parameter("width", default=10)
    deps = Parameter("deps", default=False, type=bool)

    @step
    def start(self):
        self.items = list(range(int(self.width)))
        self.next(self.branch, foreach="items")

    @sandbox
    @step
    def branch(self):
        if self.deps:
            import humanize

            self.out = humanize.intcomma(self.input * 1000)
        else:
            self.out = str(self.input * 1000)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.outs = [i.out for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    DepsFlow()

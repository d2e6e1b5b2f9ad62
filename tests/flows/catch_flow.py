"""@catch captures an exception raised inside the sandbox."""

from metaflow import FlowSpec, catch, sandbox, step


class CatchFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.boom)

    @catch(var="failure")
    @sandbox
    @step
    def boom(self):
        raise ValueError("raised inside the sandbox")
        self.next(self.end)

    @step
    def end(self):
        print("caught:", repr(self.failure))


if __name__ == "__main__":
    CatchFlow()

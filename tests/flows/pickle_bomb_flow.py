"""A sandboxed step whose artifact would run a command on the launcher when unpickled."""

from metaflow import FlowSpec, Parameter, sandbox, step


class Bomb:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


class PickleBombFlow(FlowSpec):
    marker = Parameter("marker", default="/tmp/pickle-bomb-went-off")

    @step
    def start(self):
        self.next(self.untrusted)

    @sandbox
    @step
    def untrusted(self):
        self.payload = Bomb(self.marker)
        self.next(self.end)

    @step
    def end(self):
        print("payload:", self.payload)


if __name__ == "__main__":
    PickleBombFlow()

"""A sandboxed step prints terminal control sequences: an OSC 52 clipboard write, CSI screen clearing, a
window title and a C1 CSI."""

from metaflow import FlowSpec, sandbox, step

SEQUENCES = "\x1b]52;c;cm0gLXJmIH4=\x07|\x1b[2J\x1b[H|\x1b]0;owned\x07|\u009b31m"


class TerminalFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.talk)

    @sandbox
    @step
    def talk(self):
        print("TERMINAL-BEFORE" + SEQUENCES + "TERMINAL-AFTER", flush=True)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TerminalFlow()

"""A flow whose middle step runs untrusted-looking code in a sandbox, while the rest runs as usual.

    python hello_sandbox.py run

The sandboxed step sees its inputs and the host's system (read-only), but not your home directory,
your environment variables or the network; its artifacts come back to the next step as usual.
"""

import os

from metaflow import FlowSpec, current, sandbox, step


class HelloSandboxFlow(FlowSpec):
    @step
    def start(self):
        self.question = "What can a sandboxed step see?"
        self.next(self.explore)

    @sandbox(memory=1024, cpu=1)
    @step
    def explore(self):
        import socket

        home = os.path.expanduser("~")
        self.home_contents = sorted(os.listdir(home))
        self.env_names = sorted(os.environ)
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=2).close()
            self.network = "reachable"
        except OSError as error:
            self.network = f"unreachable ({error.strerror or error})"
        print(f"Task {current.pathspec}: pid {os.getpid()}, home {home} holds {self.home_contents}")
        print(f"Environment variables visible: {len(self.env_names)}; network: {self.network}")
        self.answer = "only what it was given"
        self.next(self.end)

    @step
    def end(self):
        print(self.question, "->", self.answer)
        print("Home seen from the sandbox:", self.home_contents, "| network:", self.network)


if __name__ == "__main__":
    HelloSandboxFlow()

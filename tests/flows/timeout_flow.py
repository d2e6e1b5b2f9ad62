"""@timeout kills a sandboxed step."""

from metaflow import FlowSpec, sandbox, step, timeout


class TimeoutFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.sleepy)

    @timeout(seconds=3)
    @sandbox
    @step
    def sleepy(self):
        import subprocess
        import time

        # A child process too: it must not outlive the sandbox.
        subprocess.Popen(["sleep", "300"])
        print("sleeping", flush=True)
        time.sleep(300)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TimeoutFlow()

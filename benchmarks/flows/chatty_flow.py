"""P3/P4: a sandboxed step that prints timestamped lines (P3) or a given number of MB (P4)."""

import sys
import time

from metaflow import FlowSpec, Parameter, sandbox, step


class ChattyFlow(FlowSpec):
    lines = Parameter("lines", default=30)
    megabytes = Parameter("megabytes", default=0)

    @step
    def start(self):
        self.next(self.talk)

    @sandbox
    @step
    def talk(self):
        for _ in range(int(self.lines)):
            print(f"BENCH_TS={time.time():.6f}", flush=True)
            time.sleep(0.1)
        chunk = ("x" * 99 + "\n") * 10_000  # 1 MB
        for _ in range(int(self.megabytes)):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ChattyFlow()

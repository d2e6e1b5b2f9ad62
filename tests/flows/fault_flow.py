"""A sandboxed step for infrastructure-fault scenarios: announces each attempt with a marker line (the Daytona
emulator's `kill_marker`), naps on its first attempt if asked, prints numbered lines."""

import time

from metaflow import FlowSpec, Parameter, current, retry, sandbox, step

#: Printed by every attempt of `work` before anything else.
MARKER = "FAULT-FLOW-WORK-STARTED"


class FaultFlow(FlowSpec):
    first_attempt_nap = Parameter("first-attempt-nap", default=0.0)
    lines = Parameter("lines", default=5)

    @step
    def start(self):
        self.next(self.work)

    @retry(times=1, minutes_between_retries=0)
    @sandbox
    @step
    def work(self):
        print(f"{MARKER} attempt={current.retry_count}", flush=True)
        if current.retry_count == 0:
            time.sleep(float(self.first_attempt_nap))
        for i in range(int(self.lines)):
            print(f"LINE-{i}", flush=True)
            time.sleep(0.05)
        self.attempt = current.retry_count
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FaultFlow()

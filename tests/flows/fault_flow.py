"""A sandboxed step for infrastructure-fault scenarios: sleeps on its first attempt, prints numbered lines."""

import time

from metaflow import FlowSpec, Parameter, current, retry, sandbox, step


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
        for i in range(int(self.lines)):
            print(f"LINE-{i}", flush=True)
            time.sleep(0.05)
        if current.retry_count == 0:
            time.sleep(float(self.first_attempt_nap))
        self.attempt = current.retry_count
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FaultFlow()

"""An @e2b step whose sandbox lease is 3 s (renewed every second while the step runs): announces itself, then
works for longer than a lease. For the lifetime-expiry scenario of the E2B emulator."""

import time

from metaflow import FlowSpec, e2b, step

MARKER = "LEASE-FLOW-WORK-STARTED"


class LeaseFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.work)

    @e2b(options={"lease": 3})
    @step
    def work(self):
        print(MARKER, flush=True)
        time.sleep(30)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LeaseFlow()

"""Prints, waits, prints: the first line must reach the launcher while the step still runs."""

import time

from metaflow import FlowSpec, sandbox, step


class LogsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.talk)

    @sandbox
    @step
    def talk(self):
        print("LIVE-FIRST", flush=True)
        time.sleep(3)
        print("LIVE-SECOND", flush=True)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LogsFlow()

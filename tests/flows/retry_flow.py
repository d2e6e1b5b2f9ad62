"""The first attempt fails inside the sandbox; @retry's second attempt succeeds."""

from metaflow import FlowSpec, current, retry, sandbox, step


class RetryFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.flaky)

    @retry(times=1, minutes_between_retries=0)
    @sandbox
    @step
    def flaky(self):
        print("attempt", current.retry_count)
        if current.retry_count == 0:
            raise RuntimeError("first attempt fails on purpose")
        self.attempt_that_worked = current.retry_count
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RetryFlow()

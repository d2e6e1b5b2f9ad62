"""A sandboxed step that fails while MFS_FAIL=1 at launch; resume re-runs it in a sandbox."""

import os

from metaflow import FlowSpec, sandbox, step

SHOULD_FAIL = os.environ.get("MFS_FAIL", "0")


class ResumeFlow(FlowSpec):
    @step
    def start(self):
        self.base = 10
        self.next(self.work)

    @sandbox(env={"MFS_FAIL": SHOULD_FAIL})
    @step
    def work(self):
        if os.environ.get("MFS_FAIL") == "1":
            raise RuntimeError("failing on purpose")
        self.result = self.base * 2
        self.in_sandbox = bool(os.environ.get("METAFLOW_SANDBOX_STAGING"))
        self.next(self.end)

    @step
    def end(self):
        print("result", self.result)


if __name__ == "__main__":
    ResumeFlow()

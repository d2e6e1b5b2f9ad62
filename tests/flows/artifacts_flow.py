"""Three steps; the middle one is sandboxed. Artifacts of several kinds flow both ways."""

import os

from metaflow import FlowSpec, sandbox, step


class ArtifactsFlow(FlowSpec):
    @step
    def start(self):
        self.number = 41
        self.text = "hello"
        self.mapping = {"a": [1, 2], "b": {"c": "d"}}
        self.blob = os.urandom(20 * 1024 * 1024)
        self.next(self.middle)

    @sandbox
    @step
    def middle(self):
        import hashlib

        self.number += 1
        self.text = self.text + " from the sandbox"
        self.mapping["seen"] = True
        self.blob_sha = hashlib.sha256(self.blob).hexdigest()
        self.blob = self.blob[::-1]
        self.home_listing = sorted(os.listdir(os.path.expanduser("~")))
        self.leaked = {k: v for k, v in os.environ.items() if k.startswith("MFS_TEST_SECRET")}
        print("sandboxed stdout line")
        print("sandboxed stderr line", file=__import__("sys").stderr)
        self.next(self.end)

    @step
    def end(self):
        import hashlib

        assert self.number == 42
        assert hashlib.sha256(self.blob[::-1]).hexdigest() == self.blob_sha
        print("end saw", self.text)


if __name__ == "__main__":
    ArtifactsFlow()

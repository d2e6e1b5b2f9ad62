"""Untrusted code trying to reach what it was not given (escape canaries), and optionally forging metadata."""

import json
import os

from metaflow import FlowSpec, Parameter, current, sandbox, step


def read(path):
    with open(path) as f:
        return f.read()


def touch(path):
    with open(path, "w"):
        pass


def attempt(action):
    try:
        action()
        return "reached"
    except OSError as error:
        return type(error).__name__


class EscapeFlow(FlowSpec):
    secret_path = Parameter("secret-path", default="")
    home_secret_path = Parameter("home-secret-path", default="")
    forge = Parameter("forge", default=False, type=bool)

    @step
    def start(self):
        self.next(self.untrusted)

    @sandbox
    @step
    def untrusted(self):
        root = self._datastore._storage_impl.datastore_root  # the real local datastore root
        self.read_secret = attempt(lambda: read(self.secret_path))
        self.list_other_flows = attempt(lambda: os.listdir(os.path.join(root, "OtherFlow")))
        if root.startswith("s3://"):
            # The S3 write boundary is the store's enforcement of the session policy (see docs/security.md).
            self.write_datastore = "n/a"
        else:
            self.write_datastore = attempt(
                lambda: touch(os.path.join(root, current.flow_name, current.run_id, "planted"))
            )
        self.read_home_secret = attempt(lambda: read(self.home_secret_path))
        if self.forge:
            staging = os.environ["METAFLOW_SANDBOX_STAGING"]
            victim = os.path.join(staging, current.flow_name, current.run_id, "start", "1", "_meta")
            os.makedirs(victim, exist_ok=True)
            with open(os.path.join(victim, "sysmeta_attempt_ok_1.json"), "w") as f:
                json.dump(
                    {
                        "flow_id": current.flow_name,
                        "run_number": current.run_id,
                        "step_name": "start",
                        "task_id": "1",
                        "field_name": "attempt_ok",
                        "value": "False",
                        "type": "internal_attempt_status",
                        "tags": ["attempt_id:0"],
                    },
                    f,
                )
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EscapeFlow()

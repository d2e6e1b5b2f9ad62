"""A sandboxed step that looks everywhere it can for secrets the launcher holds."""

import os

from metaflow import FlowSpec, Parameter, sandbox, step


def _search(canaries, scan_proc):
    found = set()

    def scan(blob, where):
        for canary in canaries:
            if canary.encode() in blob:
                found.add(f"{canary[:12]}… in {where}")

    scan("\0".join(f"{k}={v}" for k, v in os.environ.items()).encode(), "env")
    for pid in os.listdir("/proc") if scan_proc else []:
        if pid.isdigit():
            for part in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{pid}/{part}", "rb") as f:
                        scan(f.read(), f"/proc/{pid}/{part}")
                except OSError:
                    pass
    # An emulated sandbox shares the host's /proc and /tmp; there only its own home and cwd are its own.
    tops = (
        ("/tmp", os.path.expanduser("~"), os.getcwd(), "/sandbox")
        if scan_proc
        else (os.path.expanduser("~"), os.getcwd())
    )
    for top in tops:
        for dirpath, _, files in os.walk(top):
            for name in files:
                try:
                    with open(os.path.join(dirpath, name), "rb") as f:
                        scan(f.read(), os.path.join(dirpath, name))
                except OSError:
                    pass
    return sorted(found)


class CanaryFlow(FlowSpec):
    canaries = Parameter("canaries", default="")
    scan_proc = Parameter("scan-proc", default=True, type=bool)

    @step
    def start(self):
        self.next(self.untrusted)

    @sandbox
    @step
    def untrusted(self):
        self.found = _search([c for c in self.canaries.split(",") if c], self.scan_proc)
        self.has_session_token = bool(os.environ.get("AWS_SESSION_TOKEN"))
        self.env_names = sorted(os.environ)
        self.region = os.environ.get("AWS_DEFAULT_REGION")
        self.endpoint = os.environ.get("METAFLOW_S3_ENDPOINT_URL")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CanaryFlow()

"""A sandboxed step lists its writable mounts that are binds of host paths (from /proc/self/mountinfo)."""

import os

from metaflow import FlowSpec, sandbox, step

#: Filesystems a sandbox gets fresh, and the device nodes bwrap binds into its /dev.
PRIVATE_FS = {"tmpfs", "proc", "mqueue", "devpts"}
DEVICES = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}


class MountsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.look)

    @sandbox
    @step
    def look(self):
        writable = {}
        with open("/proc/self/mountinfo") as file:
            for line in file:
                fields = line.split()
                fs_type = fields[fields.index("-") + 1]
                if "rw" in fields[5].split(",") and fs_type not in PRIVATE_FS and fields[4] not in DEVICES:
                    writable[fields[4]] = fields[3]  # mount point -> host path
        self.writable = writable
        self.staging = os.environ.get("METAFLOW_SANDBOX_STAGING")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MountsFlow()

"""A real S3-compatible server process for tests: moto's server on 127.0.0.1, on a free port.

    with S3Server() as s3:
        s3.create_bucket("flows")
        env = s3.metaflow_env("flows")      # METAFLOW_DATASTORE_SYSROOT_S3, METAFLOW_S3_ENDPOINT_URL, AWS_*

The server speaks the S3 (and STS) wire protocol over HTTP; nothing is mocked in-process. It stops when
the context exits, and on Linux also when the process that started it dies (parent-death signal).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from types import TracebackType
from typing import Any

#: Credentials the server accepts (any work); tests use them as the launcher's long-lived keys.
ACCESS_KEY = "AKIAMFSANDBOXTEST"
SECRET_KEY = "mfs-launcher-long-lived-secret"


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the process that started the server dies."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class S3Server:
    """moto's server as a child process, bound to 127.0.0.1."""

    def __init__(self, region: str = "us-east-1"):
        self.region = region
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> S3Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError("moto's S3 server exited at start; is moto[server] installed?")
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto's S3 server did not answer on {self.url} within 30 s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType] | None) -> None:
        self.stop()

    def client(self, service: str = "s3") -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self, name: str, versioned: bool = False) -> None:
        s3 = self.client()
        s3.create_bucket(Bucket=name)
        if versioned:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    def env(self) -> dict[str, str]:
        """What a process needs to talk to this server as the launcher's user."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "METAFLOW_S3_ENDPOINT_URL": self.url,
        }

    def metaflow_env(self, bucket: str, prefix: str = "metaflow") -> dict[str, str]:
        """`env()` plus the settings that make Metaflow use `s3://bucket/prefix` as its datastore."""
        return {
            **self.env(),
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{bucket}/{prefix}",
            "METAFLOW_DATATOOLS_S3ROOT": f"s3://{bucket}/{prefix}/data",
        }

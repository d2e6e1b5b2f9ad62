"""A sandboxed step that tries to reach each URL it is given, through its proxy settings and directly.

`NETWORK = None` is replaced by the test with the step's `network=` (a policy name or a list of destinations).
"""

import os
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from metaflow import FlowSpec, Parameter, sandbox, step

NETWORK = None


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return "ok " + response.read().decode().strip()
    except urllib.error.HTTPError as error:
        return "http %d %s" % (error.code, error.read().decode(errors="replace").strip())
    except (OSError, ValueError) as error:
        return "failed " + type(error).__name__


def connect(url):
    """A direct TCP connection, ignoring any proxy setting (what hostile code would try)."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 80), timeout=5).close()
        return "reached"
    except OSError as error:
        return type(error).__name__


class EgressFlow(FlowSpec):
    urls = Parameter("urls", default="")

    @step
    def start(self):
        self.next(self.untrusted)

    @sandbox(network=NETWORK)
    @step
    def untrusted(self):
        urls = [url for url in self.urls.split(",") if url]
        self.fetched = {url: fetch(url) for url in urls}
        self.direct = {url: connect(url) for url in urls}
        self.proxy = os.environ.get("HTTPS_PROXY")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EgressFlow()

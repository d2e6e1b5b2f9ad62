"""The thin client starts once per sandboxed task: without `site`, it imports the standard library only, and not
even the parts a task that finds its host running never uses."""

import json
import subprocess
import sys

from metaflow_extensions.sandbox.plugins.sandbox.host_client import MODULE, entrypoint

PROBE = """
before = set(sys.modules)
import {module}
new = sorted(set(sys.modules) - before)
import json
print(json.dumps(new))
"""


def test_the_thin_client_imports_only_the_standard_library_and_nothing_it_rarely_needs():
    python, *flags, start = entrypoint()
    assert python == sys.executable and flags == ["-S", "-c"]
    setup = start.split("from ")[0]  # what the real start does before importing the client
    probe = setup + PROBE.format(module=MODULE)
    done = subprocess.run([python, *flags, probe], capture_output=True, text=True, check=True)
    imported = json.loads(done.stdout)
    ours = [m for m in imported if m.split(".")[0] == "metaflow_extensions"]
    foreign = [m for m in imported if m not in ours and m.split(".")[0] not in sys.stdlib_module_names]
    assert foreign == [], f"the thin client imports more than the standard library: {foreign}"
    assert set(ours) <= {
        "metaflow_extensions",
        "metaflow_extensions.sandbox",
        "metaflow_extensions.sandbox.plugins",
        "metaflow_extensions.sandbox.plugins.sandbox",
        "metaflow_extensions.sandbox.plugins.sandbox.host_client",
        "metaflow_extensions.sandbox.plugins.sandbox.host_protocol",
    }, ours
    costly = {"subprocess", "typing", "metaflow", "json", "re", "enum", "socket", "signal", "selectors"}
    assert not costly & set(imported), "only a task that starts a host needs these, or none does"


def test_a_hello_survives_any_argv():
    from metaflow_extensions.sandbox.plugins.sandbox import host_protocol as wire

    argv = ["flow.py", "", "--tag", "ünï", "a b", "x\udcff"]  # empty, non-ASCII, spaces, undecodable bytes
    hello = wire.Hello.decode(wire.Hello("c0de", "/w d", argv).encode())
    assert hello is not None
    assert (hello.protocol, hello.code, hello.cwd, hello.argv) == (wire.PROTOCOL, "c0de", "/w d", argv)
    assert wire.Hello.decode(b'{"protocol": 1}') is None  # another protocol's hello
    assert wire.number(b"137", 202) == 137 and wire.number(b"-1", 202) == -1 and wire.number(b"x", 202) == 202

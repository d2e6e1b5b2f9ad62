"""The thin client starts once per sandboxed task: it imports the standard library only, and not even the
parts a task that finds its host running never uses."""

import json
import subprocess
import sys

PROBE = """
import json, sys
before = set(sys.modules)
import metaflow_extensions.sandbox.plugins.sandbox.host_client
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_the_thin_client_imports_only_the_standard_library_and_nothing_it_rarely_needs():
    done = subprocess.run([sys.executable, "-I", "-c", PROBE], capture_output=True, text=True, check=False)
    if done.returncode != 0 and "No module named" in done.stderr:
        done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
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
    assert not {"subprocess", "typing", "metaflow"} & set(imported), (
        "only a task that starts a host needs these"
    )

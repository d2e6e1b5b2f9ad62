"""Through a real flow: the only writable host paths in a bubblewrap sandbox are the task's staging tree and
the sandbox's own private directories (see docs/security.md, "Bubblewrap hardening")."""

from __future__ import annotations

import os

import pytest

from .conftest import BACKEND, Project

pytestmark = pytest.mark.integration

#: The sandbox's private directories, backed by its own host directory (`bwrap-<id>` in the state dir).
PRIVATE = ("/tmp", "/home/sandbox", "/sandbox")


def test_only_the_staging_tree_and_the_sandboxs_own_directories_are_writable(project: Project):
    if BACKEND != "bubblewrap":
        pytest.skip(
            "mountinfo of a bubblewrap sandbox: other backends' sandboxes share no host paths by binds"
        )
    project.run("mounts_flow.py", "run")
    seen = project.query(
        """
result = {}
t = Flow('MountsFlow').latest_run['look'].task
result['writable'] = t['writable'].data
result['staging'] = t['staging'].data
"""
    )
    assert isinstance(seen, dict)
    writable: dict[str, str] = dict(seen["writable"])
    staging = seen["staging"]
    own_dirs = {os.path.dirname(writable.pop(path)) for path in PRIVATE}
    assert len(own_dirs) == 1 and os.path.basename(own_dirs.pop()).startswith("bwrap-")
    if project.datastore == "local":
        assert staging and writable.pop(staging) == staging
    assert writable == {}, f"writable host paths besides staging: {writable}"

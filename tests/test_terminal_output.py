"""Terminal control sequences a sandboxed step prints reach the user's terminal only as visible escapes;
the task's stored log keeps the bytes the step wrote (see docs/security.md, "Bubblewrap hardening")."""

from __future__ import annotations

import pytest

from .conftest import Project

pytestmark = pytest.mark.integration

RAW = ("\x1b]52;", "\x1b[2J", "\x1b]0;", "\u009b")
ESCAPED = (
    "TERMINAL-BEFORE\\x1b]52;c;cm0gLXJmIH4=\\x07|\\x1b[2J\\x1b[H|\\x1b]0;owned\\x07|\\u009b31mTERMINAL-AFTER"
)


def test_control_sequences_reach_the_terminal_escaped(project: Project):
    result = project.run("terminal_flow.py", "run")
    output = result.stdout + result.stderr
    assert ESCAPED in output, output[-2000:]
    assert not [raw for raw in RAW if raw in output]
    stored = project.query("result = Flow('TerminalFlow').latest_run['talk'].task.stdout")
    assert isinstance(stored, str)
    assert "TERMINAL-BEFORE\x1b]52;c;" in stored, repr(stored)

"""Terminal control characters in sandboxed output are made visible (pure logic)."""

from __future__ import annotations

import pytest

from metaflow_sandbox_core import neutralize_controls


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"\x1b]52;c;aGVsbG8=\x07clipboard\n", b"\\x1b]52;c;aGVsbG8=\\x07clipboard\n"),  # OSC 52
        (b"\x1b[2J\x1b[H\x1b]0;title\x07\n", b"\\x1b[2J\\x1b[H\\x1b]0;title\\x07\n"),  # CSI, window title
        (b"\xc2\x9b31m red\n", b"\\u009b31m red\n"),  # C1 CSI in UTF-8
        (b"hidden\rshown\x08\x7f\x00\n", b"hidden\\x0dshown\\x08\\x7f\\x00\n"),
    ],
)
def test_controls_are_shown_escaped(raw: bytes, shown: bytes) -> None:
    assert neutralize_controls(raw) == shown


def test_text_tabs_newlines_and_mflog_records_are_unchanged() -> None:
    line = "[MFLOG|0|2026-01-01T00:00:00.000000Z|task|1]café\tnaïve ✓ \u00a0end\n".encode()
    assert neutralize_controls(line) == line

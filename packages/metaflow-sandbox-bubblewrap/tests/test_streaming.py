"""Unit tests of line splitting (no bwrap needed)."""

from __future__ import annotations

import os

from metaflow_sandbox_bubblewrap.streaming import LineSplitter, OutputPump


def split(chunks: list[bytes], max_line: int = 1024) -> list[bytes]:
    lines: list[bytes] = []
    splitter = LineSplitter("stdout", lambda _, line: lines.append(line), max_line=max_line)
    for chunk in chunks:
        splitter.feed(chunk)
    splitter.flush()
    return lines


def test_lines_are_rejoined_across_chunks() -> None:
    assert split([b"a", b"b\nc", b"d\n\n", b"e"]) == [b"ab\n", b"cd\n", b"\n", b"e"]


def test_only_newline_separates_lines() -> None:
    assert split([b"carriage\rreturn\x0bvt\x1cfs\n"]) == [b"carriage\rreturn\x0bvt\x1cfs\n"]


def test_newline_free_output_is_delivered_in_bounded_pieces() -> None:
    assert split([b"x" * 2500], max_line=1000) == [b"x" * 1000, b"x" * 1000, b"x" * 500]


def test_without_callback_output_is_discarded() -> None:
    splitter = LineSplitter("stdout", None)
    splitter.feed(b"no newline " * 1000)
    splitter.flush()


def test_pump_reads_pipes_until_closed() -> None:
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    os.write(out_write, b"one\ntwo")
    os.write(err_write, b"problem\n")
    os.close(out_write)
    os.close(err_write)
    seen: list[tuple[str, bytes]] = []
    pump = OutputPump(
        {"stdout": out_read, "stderr": err_read}, lambda stream, line: seen.append((stream, line))
    )
    assert pump.pump(deadline=None, exited=lambda: False) is True
    assert sorted(seen) == [("stderr", b"problem\n"), ("stdout", b"one\n"), ("stdout", b"two")]
    os.close(out_read)
    os.close(err_read)

"""A task's own files and metadata come home as one archive from the sandbox: extracted within bounds, and
read together with the blobs the task staged in a prefix."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from metaflow_sandbox_relay import LocalStaging, StagedTree, extract_bounded


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return str(path)


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_files_within_bounds_are_extracted(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a.tgz", [_file("./F/7/s/3/0.data.json", b"{}"), _file("./F/x", b"12345")])
    extract_bounded(archive, str(tmp_path / "out"), max_bytes=7, max_files=2)
    assert (tmp_path / "out/F/7/s/3/0.data.json").read_bytes() == b"{}"


def test_an_archive_that_inflates_past_the_bound_is_refused_before_writing(tmp_path: Path) -> None:
    """64 MiB of zeros compress to about 64 KiB: the headers say so before anything is written."""
    info = tarfile.TarInfo("./bomb")
    info.size = 64 << 20
    with tarfile.open(tmp_path / "bomb.tgz", "w:gz") as tar:
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert os.path.getsize(tmp_path / "bomb.tgz") < 1 << 20
    with pytest.raises(ValueError, match="more than 1048576 bytes"):
        extract_bounded(str(tmp_path / "bomb.tgz"), str(tmp_path / "out"), max_bytes=1 << 20, max_files=10)
    assert not (tmp_path / "out" / "bomb").exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "too-many"])
def test_links_special_files_and_too_many_entries_are_refused(tmp_path: Path, kind: str) -> None:
    members = [_file("./a", b"a"), _file("./b", b"b")]
    if kind == "too-many":
        members.append(_file("./c", b"c"))
    else:
        special = tarfile.TarInfo("./c")
        special.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.FIFOTYPE
        special.linkname = "/etc/passwd"
        members.append((special, None))
    archive = _archive(tmp_path / "a.tgz", members)
    with pytest.raises(ValueError, match=r"neither a file|more than 2 entries"):
        extract_bounded(
            archive, str(tmp_path / "out"), max_bytes=100, max_files=2 if kind == "too-many" else 5
        )
    assert not (tmp_path / "out" / "c").exists()


class _Prefix(LocalStaging):
    """Stands in for the staging prefix (an S3Staging's interface, over a directory)."""

    def is_partial_write(self, rel: str) -> bool:
        return False


def test_the_tree_reads_each_file_where_it_was_staged_and_refuses_one_staged_twice(tmp_path: Path) -> None:
    for root, rel, data in [
        ("local", "F/7/s/3/0.data.json", b"listing"),
        ("local", "F/7/s/3/tmp123", b"partial"),
        ("remote", "F/data/ab/abcd", b"blob"),
    ]:
        (tmp_path / root / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / root / rel).write_bytes(data)
    tree = StagedTree(_Prefix(str(tmp_path / "remote")), LocalStaging(str(tmp_path / "local")))  # type: ignore[arg-type]
    files = dict(tree.files())
    assert set(files) == {"F/7/s/3/0.data.json", "F/7/s/3/tmp123", "F/data/ab/abcd"}
    assert (
        tree.open("F/data/ab/abcd").read() == b"blob"
        and tree.open("F/7/s/3/0.data.json").read() == b"listing"
    )
    assert tree.is_partial_write("F/7/s/3/tmp123") and tree.problems == []

    (tmp_path / "remote/F/7/s/3").mkdir(parents=True)
    (tmp_path / "remote/F/7/s/3/0.data.json").write_bytes(b"another listing")
    list(tree.files())
    assert tree.problems == ["F/7/s/3/0.data.json is staged twice"]

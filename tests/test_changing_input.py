"""A shard that changes while a run works on it: nothing is copied, hashed or recorded as done from a
version other than the one whose headers were read. Found by a hostile pass: a shard replaced between
the reader and the writer had its new bytes copied at the old offsets (a listed sample kept, an
unlisted one deleted), and the done marker named the new version, so a rerun trusted the output."""

from __future__ import annotations

import io
import os
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest
from conftest import write_ids

import imagesieve.stages.hashing.hash_writer as hash_writer
import imagesieve.stages.io.writer as shard_writer
from imagesieve.executors.local import LocalExecutor
from imagesieve.tar.names import ShardError
from imagesieve.workflows.find import FindConfig, find_duplicates
from imagesieve.workflows.remove import remove_duplicates


def _reorder_in_place(shard: str, tmp_path) -> None:
    """Rewrite `shard` with its samples in reverse order: same size, same mtime (restored), same inode."""
    st = os.stat(shard)
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    scratch = tmp_path / "scratch.tar"
    with tarfile.open(scratch, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(0, len(members), 3)[::-1]:
            for info, data in members[i:i + 3]:
                tar.addfile(info, io.BytesIO(data))
    data = scratch.read_bytes()[:st.st_size].ljust(st.st_size, b"\0")
    with open(shard, "r+b") as f:  # in place: the inode stays, only the ctime tells
        f.write(data)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace(shard: str, tmp_path) -> None:
    """Another program swaps in a new file under the same name (a new inode)."""
    _reorder_in_place(shutil.copy(shard, tmp_path / "copy.tar"), tmp_path)
    os.replace(tmp_path / "copy.tar", shard)


def _change_first(monkeypatch, stage: type, change, shard: str, tmp_path):
    """Make `stage.process` change the shard file just before it works, as another program might; returns
    the original `process`."""
    original = stage.process

    def change_then_process(self, task):
        change(shard, tmp_path)
        return original(self, task)

    monkeypatch.setattr(stage, "process", change_then_process)
    return original


@pytest.mark.parametrize("change", [_replace, _reorder_in_place])
def test_a_shard_changed_before_its_copy_is_refused_and_redone_by_a_rerun(make_shard, tmp_path, monkeypatch,
                                                                          change):
    shard = make_shard("00000.tar", n=6)
    write_ids(tmp_path / "ids", ["00000001"])
    original = _change_first(monkeypatch, shard_writer.ImageWriterStage, change, shard, tmp_path)
    with pytest.raises(ShardError, match="changed .* after its headers were read"):
        remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "ids"),
                          executor=LocalExecutor(1))
    assert not (tmp_path / "out" / "00000.tar").exists()
    assert not (tmp_path / "out" / "_imagesieve" / "done" / "00000.tar.json").exists()

    monkeypatch.setattr(shard_writer.ImageWriterStage, "process", original)
    summary = remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "ids"),
                                executor=LocalExecutor(1))
    assert summary.removed == 1 and summary.shards_skipped == 0
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        keys = {name.split(".")[0] for name in tar.getnames()}
    assert keys == {f"{i:08d}" for i in range(6)} - {"00000001"}
    assert pq.read_table(tmp_path / "out" / "removed.parquet").column("id").to_pylist() == ["00000001"]


def test_a_shard_changed_while_hashed_records_no_hashes(make_shard, tmp_path, monkeypatch):
    shard = make_shard("00000.tar", n=6)
    _change_first(monkeypatch, hash_writer.HashWriterStage, _replace, shard, tmp_path)
    with pytest.raises(ShardError, match="changed .* after it was read"):
        find_duplicates(str(tmp_path / "shards"), str(tmp_path / "found"), FindConfig(method="phash"),
                        executor=LocalExecutor(1))
    assert not list((tmp_path / "found").rglob("hashes/*.parquet"))


def test_parts_of_a_shard_read_from_two_versions_write_no_table(tmp_path):
    """Found by a hostile pass: the last shards are hashed in parts, each reading the file itself; a shard
    replaced between two parts gave one table of rows from both versions."""
    import pyarrow as pa

    from imagesieve.stages.hashing.hash_writer import HashWriterStage
    from imagesieve.tasks import FileGroupTask

    def part(k: int, version: tuple) -> FileGroupTask:
        table = pa.table({"id": [f"{k}"], "shard": ["00000.tar"], "position": [k]})
        return FileGroupTask(dataset_name="d", data=[str(tmp_path / "hashes" / "00000.tar.parquet")], task_id="t",
                             _metadata={"part": (k, 2), "table": table, "shard": "in/00000.tar",
                                        "source_version": version})

    writer = HashWriterStage(hashes_dir=str(tmp_path / "hashes"))
    with pytest.raises(ShardError, match="changed between the parts"):
        writer.write_parts([part(0, (1, 2, 3, 4, 5)), part(1, (1, 9, 3, 4, 5))])
    assert not (tmp_path / "hashes" / "00000.tar.parquet").exists()
    writer.write_parts([part(0, (1, 2, 3, 4, 5)), part(1, (1, 2, 3, 4, 5))])
    assert (tmp_path / "hashes" / "00000.tar.parquet").exists()

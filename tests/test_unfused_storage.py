"""A stage that does not run fused with the reader (another batch size) reads object-storage shards:
its tasks carry the object's URL and version, not a path in the reader's temp folder, so a worker of
another pool (or another Ray node) makes its own local copy, checked to be the version read."""

from __future__ import annotations

import io
import pickle
import tarfile
import tempfile
from pathlib import Path

import fsspec
import pytest
from conftest import CREDENTIALS
from stages_for_tests import BrightnessFilterStage, lines

from imagesieve import FilePartitioningStage, ImageReaderStage, ImageWriterStage, LocalExecutor, Pipeline
from imagesieve.storage.shard_copy import ShardChangedError, ShardCopy

pytest.importorskip("s3fs")


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """This test's own temp folder (workers are forked, and inherit it): spool copies land here only."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def shards(make_shard, tmp_path) -> Path:
    for k in range(3):
        make_shard(f"{k:05d}.tar", n=5, start=5 * k)
    return tmp_path / "shards"


def unfused_pipeline(source: str, out: Path, log_dir: Path, storage_options: dict | None) -> Pipeline:
    """Reader -> a filter reading pixels in batches of 2 (its own pool) -> writer."""
    return Pipeline(name="unfused", stages=[
        FilePartitioningStage(file_paths=source, files_per_partition=1, storage_options=storage_options),
        ImageReaderStage(storage_options=storage_options),
        BrightnessFilterStage(log_dir=str(log_dir), threshold=100.0, batch_size=2),
        ImageWriterStage(output_dir=str(out), storage_options=storage_options),
    ])


def written(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def run_both(source: str, shards: Path, tmp_path: Path, executor, storage_options: dict | None) -> None:
    """The unfused pipeline on the object-storage copy and on the local shards writes the same bytes."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    unfused_pipeline(str(shards), tmp_path / "local", logs, None).run(LocalExecutor(1))
    unfused_pipeline(source, tmp_path / "remote", logs, storage_options).run(executor)
    expected = written(tmp_path / "local")
    assert len(expected) == 3 and written(tmp_path / "remote") == expected
    kept = sum(len(tarfile.open(fileobj=io.BytesIO(data)).getnames()) for data in expected.values())
    assert 0 < kept < 3 * 5 * 3  # the filter read pixels and dropped some samples (3 members a sample)
    assert "2" in lines(str(logs), "batches")  # in batches of two: not fused with the reader


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unfused_stage_reads_s3_shards_and_leaves_no_copy(s3, endpoint, shards, tmp_path, private_tmp,
                                                               monkeypatch, workers):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for path in sorted(shards.glob("*.tar")):
        s3.put_file(str(path), f"{s3.bucket}/in/{path.name}")
    run_both(f"s3://{s3.bucket}/in", shards, tmp_path, LocalExecutor(workers), {"endpoint_url": endpoint})
    assert list(private_tmp.iterdir()) == []  # every worker's copies were deleted


def test_an_unfused_stage_reads_memory_shards(shards, tmp_path, private_tmp):
    memory = fsspec.filesystem("memory")
    for path in sorted(shards.glob("*.tar")):
        memory.pipe_file(f"/unfused-in/{path.name}", path.read_bytes())
    try:
        run_both("memory://unfused-in", shards, tmp_path, LocalExecutor(2), None)
    finally:
        memory.rm("/unfused-in", recursive=True)


def test_a_copy_made_elsewhere_refuses_an_object_changed_since_it_was_read(shards):
    memory = fsspec.filesystem("memory")
    memory.pipe_file("/changing/00000.tar", (shards / "00000.tar").read_bytes())
    try:
        read = ShardCopy("memory://changing/00000.tar")
        assert Path(read.path()).read_bytes() == (shards / "00000.tar").read_bytes()
        sent = pickle.loads(pickle.dumps(read))  # what a worker of another pool receives: no path
        assert sent.path() == read.path()  # this process already holds that version: one copy
        memory.pipe_file("/changing/00000.tar", (shards / "00001.tar").read_bytes())
        elsewhere = pickle.loads(pickle.dumps(read))
        del read, sent  # the copy is gone once nothing refers to it; a new one is the new version
        with pytest.raises(ShardChangedError, match="memory://changing/00000.tar: the object changed"):
            elsewhere.path()
    finally:
        memory.rm("/changing", recursive=True)

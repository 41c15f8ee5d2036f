"""Curator's API shape, as its image tutorial and its own unit tests use it: `_name`, task IDs suffixed
by the removal stage, `Pipeline.run()` without an executor, a stage reading `image_data` after the
reader, and images to a Parquet table (`ConvertImageBatchToDocumentBatchStage` -> `ParquetWriter`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import write_ids

from imagesieve import (
    ConvertImageBatchToDocumentBatchStage,
    FilePartitioningStage,
    ImageBatch,
    ImageDuplicatesRemovalStage,
    ImageObject,
    ImageReaderStage,
    ParquetWriter,
    Pipeline,
    ProcessingStage,
)


def test_removal_suffixes_the_task_id_with_its_name_as_curators_test_asserts(tmp_path):
    write_ids(tmp_path, ["img2", "img4", "img5"], name="a.parquet")
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path))
    stage.setup()
    batch = ImageBatch(task_id="t0", dataset_name="ds", data=[ImageObject(image_id=i) for i in
                                                              ["img1", "img2", "img3", "img4"]])
    out = stage.process(batch)
    assert [image.image_id for image in out.data] == ["img1", "img3"]
    assert stage._name == "image_dedup_filter" and out.task_id.endswith(stage._name)
    assert out.dataset_name == "ds"


@dataclass
class MeanBrightnessStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Reads decoded pixels, as Curator's filters and embedders declare."""

    name: str = "mean_brightness"

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["image_data"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["brightness"]

    def process(self, task: ImageBatch) -> ImageBatch:
        for image in task.data:
            image.brightness = float(image.image_data.mean())
        return task


def test_tutorial_shape_pipeline_runs_without_an_executor_and_writes_a_parquet_per_task(make_shard, tmp_path):
    make_shard("00000.tar", n=3)
    make_shard("00001.tar", n=2, start=3)
    out = tmp_path / "embeddings"
    pipeline = Pipeline("image_fields", stages=[
        FilePartitioningStage(file_paths=str(tmp_path / "shards"), files_per_partition=1, file_extensions=[".tar"]),
        ImageReaderStage(),
        MeanBrightnessStage(),  # needs image_data, which the reader provides (decoded on first access)
        ConvertImageBatchToDocumentBatchStage(fields=["image_id", "brightness"]),
        ParquetWriter(path=str(out)),
    ])
    results = pipeline.run()  # no executor: a LocalExecutor
    files = sorted(path for task in results for path in task.data)
    assert len(files) == 2 and sorted(os.listdir(out)) == sorted(os.path.basename(f) for f in files)
    rows = [row for path in files for row in pq.read_table(path).to_pylist()]
    assert sorted(row["image_id"] for row in rows) == [f"{i:08d}" for i in range(5)]
    assert all(0 < row["brightness"] < 255 for row in rows)


def test_convert_keeps_embeddings_as_lists_and_the_writer_selects_fields(tmp_path):
    images = [ImageObject(image_id="a", embedding=np.array([0.5, 1.5], np.float32)),
              ImageObject(image_id="b", embedding=np.array([2.0, 3.0], np.float32))]
    document = ConvertImageBatchToDocumentBatchStage(fields=["image_id", "embedding"]).process(
        ImageBatch(dataset_name="ds", data=images, task_id="t"))
    assert document.num_items == 2
    written = ParquetWriter(path=str(tmp_path / "out"), fields=["embedding"]).process(document)
    table = pq.read_table(written.data[0])
    assert table.column_names == ["embedding"] and table.column("embedding").to_pylist() == [[0.5, 1.5], [2.0, 3.0]]
    assert os.listdir(tmp_path / "out") == [os.path.basename(written.data[0])]  # no temp file left


def test_the_writers_mode_acts_as_curators_and_deletes_only_its_own_files(tmp_path):
    """Fifth hostile pass: mode="overwrite" deleted nothing, so a shard gone from the input kept its embeddings,
    and the semantic workflow removed the only copies of images as duplicates of images no longer in the
    dataset. Now "overwrite" starts from an empty folder, deleting only files a ParquetWriter wrote."""
    documents = [ConvertImageBatchToDocumentBatchStage(fields=["image_id"]).process(
        ImageBatch(dataset_name="ds", data=[ImageObject(image_id=key)], task_id=key)) for key in ("a", "b")]
    out = tmp_path / "emb"
    old = [ParquetWriter(path=str(out)).process(d).data[0] for d in documents]
    assert len(set(old)) == 2
    with pytest.raises(FileExistsError, match=r"mode='error'\): the path already holds files"):
        ParquetWriter(path=str(out), mode="error")
    ParquetWriter(path=str(out), mode="overwrite").process(documents[0])  # a rerun of one shard only
    assert pq.read_table(str(out)).column("image_id").to_pylist() == ["a"]

    (out / "notes.parquet").write_bytes(b"a user's file")
    with pytest.raises(ValueError, match="deletes only the files a ParquetWriter wrote; .*notes.parquet is not one"):
        ParquetWriter(path=str(out), mode="overwrite")
    assert sorted(p.name for p in out.iterdir()) == sorted([os.path.basename(old[0]), "notes.parquet"])
    with pytest.raises(ValueError, match="mode='later': choose"):
        ParquetWriter(path=str(out), mode="later")

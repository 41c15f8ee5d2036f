"""The runtime on LocalExecutor: per-group worker pools, batching, teardown, accounting, worker errors."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import write_ids
from PIL import Image
from stages_for_tests import BrightnessFilterStage, BrokenSetupStage, FailingStage, lines

from imagesieve import (
    FilePartitioningStage,
    ImageBatch,
    ImageDuplicatesRemovalStage,
    ImageReaderStage,
    ImageWriterStage,
    LocalExecutor,
    Pipeline,
    ProcessingStage,
    Resources,
    WorkerDied,
)
from imagesieve.executors.plan import fuse

LISTED = ["00000001", "00000005", "00000007", "00000020"]  # 00000005 is a dark photo, the others are not


@pytest.fixture
def dataset(make_shard, tmp_path):
    for i in range(5):
        make_shard(f"{i:05d}.tar", n=6, start=6 * i)
    write_ids(tmp_path / "dups", LISTED)
    (tmp_path / "logs").mkdir()
    return str(tmp_path / "shards"), str(tmp_path / "dups"), str(tmp_path / "logs")


def curator_pipeline(shards: str, dups: str, out: str, middle: ProcessingStage) -> Pipeline:
    """A pipeline as a NeMo Curator user writes it; only the imports differ."""
    return (Pipeline(name="image_deduplication", description="filter, then remove listed duplicates")
            .add_stage(FilePartitioningStage(file_paths=shards, files_per_partition=1, file_extensions=[".tar"]))
            .add_stage(ImageReaderStage(dali_batch_size=100, verbose=False, num_threads=16, num_gpus_per_worker=0.25))
            .add_stage(middle)
            .add_stage(ImageDuplicatesRemovalStage(removal_parquets_dir=dups, duplicate_id_field="id"))
            .add_stage(ImageWriterStage(output_dir=out, remove_image_data=True)))


def tree(folder: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.tar"))}


def removed_reasons(out: str) -> dict[str, str]:
    table = pq.read_table(Path(out, "_imagesieve", "removed"))
    return dict(zip(table.column("id").to_pylist(), table.column("reason").to_pylist(), strict=True))


def test_curator_style_filter_before_the_writer_is_accounted(dataset, tmp_path):
    shards, dups, logs = dataset
    outputs = {}
    for workers in (1, 2):
        out = str(tmp_path / f"out{workers}")
        results = curator_pipeline(shards, dups, out, BrightnessFilterStage(log_dir=logs)).run(LocalExecutor(workers))
        stats = [r._metadata for r in results]
        assert sum(s["samples_in"] for s in stats) == 30
        assert sum(s["kept"] + s["removed"] for s in stats) == 30
        outputs[workers] = tree(out), removed_reasons(out)
    assert outputs[1] == outputs[2]
    reasons = outputs[1][1]
    assert {r for r in reasons.values()} == {"dropped by brightness_filter", "listed as duplicate"}
    # the filter runs before removal: a listed sample the filter drops is counted as the filter's
    dark = {}
    for key in LISTED:
        with tarfile.open(Path(shards) / f"{int(key) // 6:05d}.tar") as tar:
            dark[key] = np.asarray(Image.open(tar.extractfile(f"{key}.jpg")).convert("RGB")).mean() < 110.0
    assert set(dark.values()) == {True, False}  # both cases are here
    assert {key: reasons[key] for key in LISTED} == {
        key: "dropped by brightness_filter" if dark[key] else "listed as duplicate" for key in LISTED}


def test_batch_size_groups_tasks_and_process_batch_only_stage_runs(dataset, tmp_path):
    shards, dups, logs = dataset
    stage = BrightnessFilterStage(log_dir=logs).with_(batch_size=2)
    curator_pipeline(shards, dups, str(tmp_path / "out"), stage).run(LocalExecutor(2))
    assert sorted(int(n) for n in lines(logs, "batches")) == [1, 2, 2]  # 5 shards in batches of 2


def test_process_batch_only_stage_at_batch_size_one(dataset, tmp_path):
    shards, dups, logs = dataset
    stage = BrightnessFilterStage(log_dir=logs, batch_size=1)
    results = curator_pipeline(shards, dups, str(tmp_path / "out"), stage).run(LocalExecutor(1))
    assert len(results) == 5 and lines(logs, "batches") == ["1"] * 5


def test_setup_and_teardown_once_in_every_worker(dataset, tmp_path):
    shards, dups, logs = dataset
    curator_pipeline(shards, dups, str(tmp_path / "out"), BrightnessFilterStage(log_dir=logs)).run(LocalExecutor(2))
    setups, teardowns = lines(logs, "setup"), lines(logs, "teardown")
    assert len(setups) == 2 and sorted(setups) == sorted(teardowns) and len(set(setups)) == 2


def test_fusion_keeps_reader_removal_writer_in_one_worker(tmp_path):
    stages = [ImageReaderStage(), ImageDuplicatesRemovalStage(str(tmp_path)), ImageWriterStage(output_dir="x")]
    assert [len(g.stages) for g in fuse(stages)] == [3]
    batched = [ImageReaderStage(), BrightnessFilterStage(), *stages[1:]]
    assert [[s.name for s in g.stages] for g in fuse(batched)] == [
        ["image_reader"], ["brightness_filter", "image_dedup_filter", "image_writer"]]
    heavier = [stages[0], stages[1].with_(resources=Resources(cpus=2)), stages[2]]
    assert [len(g.stages) for g in fuse(heavier)] == [1, 1, 1]


@pytest.mark.parametrize("workers", [1, 2])
def test_exception_in_a_worker_keeps_type_message_stage_and_shard(dataset, tmp_path, workers):
    shards, dups, logs = dataset
    pipeline = curator_pipeline(shards, dups, str(tmp_path / "out"), FailingStage(log_dir=logs))
    with pytest.raises(ValueError) as caught:
        pipeline.run(LocalExecutor(workers))
    first_line = str(caught.value).splitlines()[0]
    assert first_line.startswith("cannot handle 6 images (stage 'fails_on_a_shard', shard '")
    assert first_line.endswith("00001.tar', key '00000008')")
    assert len(lines(logs, "teardown")) == workers  # torn down on error too


def test_a_killed_worker_is_replaced_and_its_task_retried(dataset, tmp_path):
    shards, dups, logs = dataset
    out = str(tmp_path / "out")
    results = curator_pipeline(shards, dups, out, FailingStage(log_dir=logs, exit_code=9, times=1)).run(
        LocalExecutor(2))
    [died] = lines(logs, "failures")  # the worker holding 00001.tar died, once
    torn_down = lines(logs, "teardown")  # by the workers that lived to the end: two, the dead one's replacement too
    assert len(set(torn_down)) == len(torn_down) == 2 and died not in torn_down
    assert len(results) == 5  # its task retried: every shard written, as a run with no death writes it
    curator_pipeline(shards, dups, str(tmp_path / "ref"), FailingStage(log_dir=logs, times=0)).run(LocalExecutor(1))
    assert tree(out) == tree(str(tmp_path / "ref"))


def test_a_worker_that_keeps_dying_is_a_clear_error(dataset, tmp_path):
    shards, dups, logs = dataset
    pipeline = curator_pipeline(shards, dups, str(tmp_path / "out"), FailingStage(log_dir=logs, exit_code=9))
    with pytest.raises(WorkerDied, match=r"stage '.*fails_on_a_shard.*' died \(exit code 9\) 3 times running shard "
                                         r"'.*00001.tar'; finished shards are kept"):
        pipeline.run(LocalExecutor(2, max_retries=2))
    assert len(lines(logs, "failures")) == 3


def test_stage_needing_more_cpus_than_the_machine_is_refused(dataset, tmp_path):
    shards, dups, logs = dataset
    stage = BrightnessFilterStage(log_dir=logs).with_(resources=Resources(cpus=64))
    with pytest.raises(RuntimeError, match="needs 64 CPUs per worker"):
        curator_pipeline(shards, dups, str(tmp_path / "out"), stage).run(LocalExecutor(2))


def test_image_data_is_decoded_lazily_and_not_shipped(make_shard):
    batch = ImageReaderStage().read_shard(make_shard(n=2), "00000.tar")
    image = batch.data[0]
    assert not image.is_decoded
    assert image.image_data.shape[2] == 3 and image.is_decoded
    assert not pickle.loads(pickle.dumps(image)).is_decoded  # re-decoded where needed, never sent
    image.image_data = None  # settable, as the reference's writer does
    assert not image.is_decoded


def test_pipeline_api_matches_the_reference(tmp_path):
    reader = ImageReaderStage()
    pipeline = Pipeline("p", "reads shards", config={"x": 1}).add_stage(FilePartitioningStage(file_paths="s"))
    assert pipeline.add_stage(reader) is pipeline and pipeline.description == "reads shards"
    assert "image_reader" in pipeline.describe() and pipeline.build() is pipeline
    with pytest.warns(DeprecationWarning):
        assert Pipeline("old", [reader]).stages == [reader]
    tuned = reader.with_(name="r2", batch_size=4, num_workers=3, num_workers_per_node=1)
    assert (tuned.name, tuned.batch_size, tuned.num_workers(), tuned.num_workers_per_node()) == ("r2", 4, 3, 1)
    assert reader.name == "image_reader" and reader.num_workers() is None
    assert tuned.get_config()["batch_size"] == 4
    with pytest.raises(ValueError, match="images_per_tar cannot apply"):
        ImageWriterStage(output_dir=str(tmp_path), images_per_tar=1000)
    with pytest.raises(ValueError, match="blocksize cannot apply"):
        FilePartitioningStage(file_paths="s", blocksize="512MB")
    with pytest.raises(ValueError, match="gpu_memory_gb"):
        Resources(gpus=1, gpu_memory_gb=8)


def test_drop_records_removals_on_the_batch():
    from imagesieve import ImageObject

    batch = ImageBatch(dataset_name="d", data=[ImageObject(image_id=k, shard="s.tar") for k in "abc"])
    batch.drop([batch.data[1]], "too dark")
    assert [i.image_id for i in batch.data] == ["a", "c"] and batch.samples_in == 3
    assert [(r.image_id, r.shard, r.reason) for r in batch.removed] == [("b", "s.tar", "too dark")]



def test_a_failing_setup_keeps_its_type_and_names_the_stage(dataset, tmp_path):
    shards, dups, _ = dataset
    pipeline = curator_pipeline(shards, dups, str(tmp_path / "out"), BrokenSetupStage())
    with pytest.raises(FileNotFoundError, match=r"model.bin'.*\(stage 'broken_setup', setup on worker"):
        pipeline.run(LocalExecutor(2))


class SplitStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Fan-out: each batch becomes two fresh ones, minus the first image (dropped silently)."""

    name = "split"

    def process(self, task: ImageBatch) -> list[ImageBatch]:
        half = len(task.data) // 2
        return [ImageBatch(data=part, dataset_name=task.dataset_name, _metadata=task._metadata)
                for part in (task.data[1:half], task.data[half:])]


class DropAllStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Filters whole tasks out, as a Curator stage does by returning None."""

    name = "drop_all"

    def process(self, task: ImageBatch) -> None:
        return None


def test_fan_out_and_filtered_tasks_are_accounted(make_shard):
    from imagesieve.executors.runner import call_stage

    batch = ImageReaderStage().read_shard(make_shard(n=6), "00000.tar")
    [[first, second]] = call_stage(SplitStage(), [batch])
    assert (len(first.data), len(second.data)) == (2, 3)
    assert first.samples_in + second.samples_in == 6 and first.task_id != second.task_id
    assert [(r.image_id, r.reason) for r in first.removed + second.removed] == [("00000000", "dropped by split")]
    [[carrier]] = call_stage(DropAllStage(), [first])
    assert carrier.data == [] and carrier.samples_in == 3 and len(carrier.removed) == 3
    assert {r.reason for r in carrier.removed} == {"dropped by split", "dropped by drop_all"}


class FreshDropStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Builds a fresh batch and says why it drops an image, through the typed API."""

    name = "fresh_drop"

    def process(self, task: ImageBatch) -> ImageBatch:
        fresh = ImageBatch(data=list(task.data), dataset_name=task.dataset_name, _metadata=task._metadata)
        return fresh.drop(fresh.data[:1], "blurry")


def test_drop_on_a_fresh_batch_keeps_its_reason(make_shard):
    from imagesieve.executors.runner import call_stage

    batch = ImageReaderStage().read_shard(make_shard(n=4), "00000.tar")
    [[out]] = call_stage(FreshDropStage(), [batch])
    assert out.samples_in == 4 and len(out.data) == 3
    assert [(r.image_id, r.reason) for r in out.removed] == [("00000000", "blurry")]

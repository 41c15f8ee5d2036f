"""RayExecutor on a two-node local Ray cluster: same output as LocalExecutor, per-node setup, caps, faults."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import stages_for_tests
from conftest import write_ids
from stages_for_tests import BrightnessFilterStage, BrokenSetupStage, FailingStage, lines, log

from imagesieve import Resources, WorkerDied
from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline import Pipeline
from imagesieve.stages.base import NodeInfo, WorkerMetadata
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.stages.io import FilePartitioningStage, ImageReaderStage, ImageWriterStage
from imagesieve.tasks import ImageBatch
from imagesieve.workflows.find import FindConfig, find_duplicates
from imagesieve.workflows.remove import remove_duplicates

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two local Ray nodes, each with its own temp folder (`TMPDIR` of its raylet, and so of its workers), as
    two machines have: a path in one node's temp folder means nothing on the other (`temp_dirs`)."""
    from ray.cluster_utils import Cluster

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(stages_for_tests)
    temp_dirs = [str(tmp_path_factory.mktemp(f"node{k}-tmp")) for k in range(2)]
    two_nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "env_vars": {"TMPDIR": temp_dirs[0]}})
    two_nodes.add_node(num_cpus=2, env_vars={"TMPDIR": temp_dirs[1]})
    two_nodes.temp_dirs = temp_dirs
    ray.init(address=two_nodes.address, log_to_driver=False, include_dashboard=False)
    yield two_nodes
    ray.shutdown()
    two_nodes.shutdown()


@pytest.fixture
def dataset(make_shard, tmp_path):
    for i in range(6):
        make_shard(f"{i:05d}.tar", n=6, start=6 * i)
    write_ids(tmp_path / "dups", ["00000001", "00000007", "00000020", "00000035"])
    return str(tmp_path / "shards"), str(tmp_path / "dups")


def tree_bytes(folder: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.tar"))}


@dataclass
class RecordingRemovalStage(ImageDuplicatesRemovalStage):
    """The removal stage, logging where its node and worker setup ran, and dying once if asked."""

    log_dir: str = ""
    die_on_shard: str = ""

    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        super().setup_on_node(node_info, worker_metadata)
        with open(os.path.join(self.log_dir, "node_setup.log"), "a") as f:
            f.write(f"{node_info.node_id}\n")

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        super().setup(worker_metadata)
        with open(os.path.join(self.log_dir, "worker_setup.log"), "a") as f:
            f.write(f"{worker_metadata.node_id} {worker_metadata.worker_id}\n")

    def process(self, task: ImageBatch) -> ImageBatch:
        marker = os.path.join(self.log_dir, "died")
        if self.die_on_shard and task._metadata["relative_path"] == self.die_on_shard and not os.path.exists(marker):
            Path(marker).write_text("once")
            os._exit(1)  # the worker process dies mid-task
        return super().process(task)


def run_remove(shards, dups, out, executor, per_node: int | None = None, **stage_args) -> list:
    """The removal pipeline, built by hand with the recording stage; `per_node` caps the workers of every
    stage on each node (so they still fuse into one group of workers)."""
    stages = [FilePartitioningStage(file_paths=shards), ImageReaderStage(),
              RecordingRemovalStage(removal_parquets_dir=dups, **stage_args), ImageWriterStage(output_dir=out)]
    if per_node is not None:
        stages = [stage.with_(num_workers_per_node=per_node) for stage in stages]
    return Pipeline("remove", stages=stages).run(executor)


def test_ray_output_is_byte_identical_to_local(cluster, dataset, tmp_path):
    from imagesieve.executors.ray import RayExecutor

    shards, dups = dataset
    local = remove_duplicates(shards, str(tmp_path / "local"), dups, executor=LocalExecutor(2))
    on_ray = remove_duplicates(shards, str(tmp_path / "ray"), dups, executor=RayExecutor())
    assert (on_ray.kept, on_ray.removed) == (local.kept, local.removed) == (32, 4)
    assert tree_bytes(str(tmp_path / "ray")) == tree_bytes(str(tmp_path / "local"))


def test_setup_on_node_once_per_node_and_workers_capped(cluster, dataset, tmp_path):
    from imagesieve.executors.ray import RayExecutor

    shards, dups = dataset
    logs = tmp_path / "logs"
    logs.mkdir()
    # one group of 1-CPU workers on two 2-CPU nodes: two would fit on each, the cap allows one
    run_remove(shards, dups, str(tmp_path / "out"), RayExecutor(), per_node=1, log_dir=str(logs))
    nodes = (logs / "node_setup.log").read_text().split()
    assert len(nodes) == 2 and len(set(nodes)) == 2  # once on each of the two nodes
    workers = [line.split() for line in (logs / "worker_setup.log").read_text().splitlines()]
    per_node = {}
    for node, worker in workers:
        per_node.setdefault(node, set()).add(worker)
    assert set(per_node) == set(nodes) and [len(w) for w in per_node.values()] == [1, 1]  # 1 a node, on both


def test_a_killed_worker_loses_no_samples(cluster, dataset, tmp_path):
    from imagesieve.executors.ray import RayExecutor

    shards, dups = dataset
    logs = tmp_path / "logs"
    logs.mkdir()
    results = run_remove(shards, dups, str(tmp_path / "out"), RayExecutor(), log_dir=str(logs),
                         die_on_shard="00003.tar")
    assert (logs / "died").exists()
    assert len(results) == 6  # every shard written once
    assert sum(r._metadata["kept"] for r in results) == 32 and sum(r._metadata["removed"] for r in results) == 4
    expected = remove_duplicates(shards, str(tmp_path / "local"), dups, executor=LocalExecutor(1))
    assert expected.kept == 32
    assert tree_bytes(str(tmp_path / "out")) == tree_bytes(str(tmp_path / "local"))


def test_find_on_ray_equals_local(cluster, dataset, tmp_path):
    from imagesieve.executors.ray import RayExecutor

    shards, _ = dataset
    import pyarrow.parquet as pq

    find_duplicates(shards, str(tmp_path / "local"), FindConfig(), executor=LocalExecutor(1))
    find_duplicates(shards, str(tmp_path / "ray"), FindConfig(), executor=RayExecutor())
    for part in ("duplicates", "groups", "hashes"):
        assert pq.read_table(str(tmp_path / "ray" / part)).equals(pq.read_table(str(tmp_path / "local" / part)))


def test_search_blocks_run_as_ray_tasks_with_the_local_result(cluster):
    import numpy as np
    from brute_force import brute_force_pairs

    from imagesieve.executors.ray import RayExecutor
    from imagesieve.matching.near_search import near_pairs

    codes = np.random.default_rng(3).integers(0, 2**64 - 1, size=3000, dtype=np.uint64)
    codes = np.concatenate([codes, codes[:300] ^ np.uint64(0b1011)])
    executor = RayExecutor()
    i, j, _ = near_pairs(codes, 10, parts=executor.parallelism(), run_jobs=executor.map, min_parallel=0)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == brute_force_pairs(codes, 10)
    # large enough (1.6 MB) that the codes go to Ray's object store once and are shared by the jobs
    big = np.random.default_rng(4).integers(0, 2**64 - 1, size=200_000, dtype=np.uint64)
    big = np.concatenate([big, big[:2000] ^ np.uint64(0b110)])
    on_ray = near_pairs(big, 8, parts=executor.parallelism(), run_jobs=executor.map)
    serial = near_pairs(big, 8)
    assert all((a == b).all() for a, b in zip(on_ray, serial, strict=True)) and len(on_ray[0]) >= 2000


def curator_pipeline(shards: str, dups: str, out: str, middle) -> Pipeline:
    return (Pipeline(name="image_deduplication", description="filter, then remove listed duplicates")
            .add_stage(FilePartitioningStage(file_paths=shards, file_extensions=[".tar"]))
            .add_stage(ImageReaderStage(num_gpus_per_worker=0.25))
            .add_stage(middle)
            .add_stage(ImageDuplicatesRemovalStage(removal_parquets_dir=dups))
            .add_stage(ImageWriterStage(output_dir=out)))


def test_curator_style_pipeline_on_ray_equals_local_with_teardown_in_every_actor(cluster, dataset, tmp_path):
    from imagesieve.executors.ray import RayExecutor

    shards, dups = dataset
    logs = tmp_path / "logs"
    logs.mkdir()
    local = curator_pipeline(shards, dups, str(tmp_path / "local"), BrightnessFilterStage(log_dir=str(logs / "x")))
    (logs / "x").mkdir()
    local.run(LocalExecutor(1))
    results = curator_pipeline(shards, dups, str(tmp_path / "ray"), BrightnessFilterStage(log_dir=str(logs))).run(
        RayExecutor())
    assert tree_bytes(str(tmp_path / "ray")) == tree_bytes(str(tmp_path / "local"))
    assert sum(r._metadata["samples_in"] for r in results) == 36
    assert sum(r._metadata["kept"] + r._metadata["removed"] for r in results) == 36
    setups, teardowns = lines(str(logs), "setup"), lines(str(logs), "teardown")
    assert setups and sorted(setups) == sorted(teardowns) and len(set(setups)) == len(setups)
    # 6 shards in batches of two: a partial batch goes only once nothing upstream can fill it, so none here
    assert sorted(int(n) for n in lines(str(logs), "batches")) == [2, 2, 2]


def test_exception_in_a_ray_actor_keeps_type_message_stage_and_shard(cluster, dataset, tmp_path):
    from imagesieve.executors.ray import RayExecutor

    shards, dups = dataset
    (tmp_path / "logs").mkdir()
    pipeline = curator_pipeline(shards, dups, str(tmp_path / "out"), FailingStage(log_dir=str(tmp_path / "logs")))
    with pytest.raises(ValueError) as caught:
        pipeline.run(RayExecutor())
    first_line = str(caught.value).splitlines()[0]
    assert first_line.startswith("cannot handle 6 images (stage 'fails_on_a_shard', shard '")
    assert first_line.endswith("00001.tar', key '00000008')") and "ray::" not in first_line


def test_a_failing_setup_in_a_ray_actor_keeps_its_type(cluster, dataset, tmp_path):
    from imagesieve.executors.ray import RayExecutor

    shards, dups = dataset
    with pytest.raises(FileNotFoundError, match=r"model.bin'.*\(stage 'broken_setup', setup on worker"):
        curator_pipeline(shards, dups, str(tmp_path / "out"), BrokenSetupStage()).run(RayExecutor())


def test_ray_restarts_exhausted_is_a_clear_error(cluster, dataset, tmp_path):
    from imagesieve.executors.ray import RayExecutor, RayOptions

    shards, dups = dataset
    (tmp_path / "logs").mkdir()
    stage = FailingStage(log_dir=str(tmp_path / "logs"), exit_code=9)
    pipeline = curator_pipeline(shards, dups, str(tmp_path / "out"), stage)
    with pytest.raises(WorkerDied, match="died .* restarts .* used up; it held shard\\(s\\) '.*00001.tar"):
        pipeline.run(RayExecutor(options=RayOptions(max_restarts=1, max_task_retries=1)))
    assert len(lines(str(tmp_path / "logs"), "failures")) >= 2


def test_no_node_fits_the_requested_resources(cluster, dataset, tmp_path):
    from imagesieve.executors.ray import RayExecutor

    shards, dups = dataset
    heavy = BrightnessFilterStage(log_dir=str(tmp_path)).with_(resources=Resources(cpus=8))
    with pytest.raises(RuntimeError, match="no Ray node has the resources a worker of stage 'brightness_filter.*"
                                           "cpus=8"):
        curator_pipeline(shards, dups, str(tmp_path / "out"), heavy).run(RayExecutor())


def test_copy_finder_on_ray_equals_local(cluster, tmp_path):
    """find --method copy: keypoint extraction as actors, candidate search and verification as Ray
    tasks; the same groups, scores and pairs as on the local executor."""
    pytest.importorskip("cv2")
    pytest.importorskip("faiss")
    import pyarrow.parquet as pq
    from PIL import ImageOps

    from imagesieve.executors.ray import RayExecutor
    from imagesieve.workflows.copy_find import find_copies
    from imagesieve.workflows.sample_data import distinct_images, encode, write_shard

    tiles = [image for _, image in distinct_images(160)[:8]]
    samples = [{"jpg": encode(image)} for image in tiles] + [{"jpg": encode(ImageOps.mirror(image))}
                                                               for image in tiles[:3]]
    keys = [f"k{n:02d}" for n in range(len(samples))]
    write_shard(str(tmp_path / "in" / "00000.tar"), samples[:6], keys[:6])
    write_shard(str(tmp_path / "in" / "00001.tar"), samples[6:], keys[6:])
    local = find_copies(str(tmp_path / "in"), str(tmp_path / "local"), executor=LocalExecutor(2))
    on_ray = find_copies(str(tmp_path / "in"), str(tmp_path / "ray"), executor=RayExecutor())
    assert on_ray.duplicates == local.duplicates == 3
    for name in ("groups/part-00000.parquet", "copy_pairs.parquet"):
        assert pq.read_table(tmp_path / "ray" / name).equals(pq.read_table(tmp_path / "local" / name))


def test_an_unfused_stage_reads_object_storage_shards_on_two_nodes(cluster, s3, endpoint, make_shard, tmp_path):
    """Issue 23: a stage not fused with the reader (batches of two) on a two-node cluster reads shards
    from object storage through their URL and version, never through the reader's temp path."""
    from test_unfused_storage import run_both

    for k in range(3):
        make_shard(f"{k:05d}.tar", n=5, start=5 * k, folder="objects")
    for path in sorted((tmp_path / "objects").glob("*.tar")):
        s3.put_file(str(path), f"{s3.bucket}/in/{path.name}")
    from imagesieve.executors.ray import RayExecutor

    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}  # the nodes started without them
    run_both(f"s3://{s3.bucket}/in", tmp_path / "objects", tmp_path, RayExecutor(), options)


@dataclass
class WhereBytesAreRead(BrightnessFilterStage):
    """The brightness filter, logging for each batch its node, that process's temp folder and the local
    copies its images were read from. A batch waits (up to 30 s) until a worker on the other node has one
    too: the second batch goes to the other worker while the first is held, so both nodes read."""

    def process_batch(self, tasks: list[ImageBatch]) -> list[ImageBatch]:
        import tempfile

        node = ray.get_runtime_context().get_node_id()
        log(self.log_dir, "nodes", node)
        deadline = time.monotonic() + 30
        while len(set(lines(self.log_dir, "nodes"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        kept = super().process_batch(tasks)  # decodes every image: its bytes read here
        copies = [task._metadata["shard_table"].source.path() for task in tasks]
        log(self.log_dir, "reads", json.dumps([node, tempfile.gettempdir(), copies]))
        return kept


def test_an_unfused_stage_reads_and_writes_object_storage_on_two_nodes_with_their_own_temp_folders(
        cluster, s3, endpoint, make_shard, tmp_path):
    """Issue 23, point 4: shards and OUT on S3, two nodes whose temp folders differ, a stage in batches of two
    (so not fused with the reader) on each node: every process reads the bytes from its own copy in its own
    temp folder (made from the object's URL and version, never from the reader's path), the output equals
    a local run's, and no copy is left in either temp folder."""
    from imagesieve.executors.ray import RayExecutor

    for k in range(4):
        make_shard(f"{k:05d}.tar", n=5, start=5 * k, folder="objects")
    for path in sorted((tmp_path / "objects").glob("*.tar")):
        s3.put_file(str(path), f"{s3.bucket}/in/{path.name}")
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}  # the nodes started without them

    def pipeline(source: str, out: str, filter_stage: BrightnessFilterStage, storage_options: dict | None) -> Pipeline:
        return Pipeline(name="unfused", stages=[  # one reader and one writer, a filter worker on each node
            FilePartitioningStage(file_paths=source, storage_options=storage_options),
            ImageReaderStage(storage_options=storage_options).with_(num_workers_per_node=1),
            filter_stage.with_(resources=Resources(cpus=0.5), num_workers_per_node=1),
            ImageWriterStage(output_dir=out, storage_options=storage_options).with_(num_workers_per_node=1)])

    local_filter = BrightnessFilterStage(log_dir=str(tmp_path), threshold=100.0, batch_size=2)
    pipeline(str(tmp_path / "objects"), str(tmp_path / "local"), local_filter, None).run(LocalExecutor(1))
    (tmp_path / "logs").mkdir()
    on_ray = WhereBytesAreRead(log_dir=str(tmp_path / "logs"), threshold=100.0, batch_size=2)
    started = time.monotonic()
    pipeline(f"s3://{s3.bucket}/in", f"s3://{s3.bucket}/out", on_ray, options).run(RayExecutor())
    assert time.monotonic() - started < 60

    expected = tree_bytes(str(tmp_path / "local"))
    assert len(expected) == 4
    assert {name: s3.cat_file(f"{s3.bucket}/out/{name}") for name in expected} == expected
    assert len(s3.glob(f"{s3.bucket}/out/_imagesieve/done/*.json")) == 4
    assert sorted(p.rsplit("/", 1)[1] for p in s3.find(f"{s3.bucket}/out")
                  if p.count("/") == 2) == sorted(expected)  # nothing else at the top: no temp key left
    reads = [json.loads(line) for line in lines(str(tmp_path / "logs"), "reads")]
    assert len(reads) == 2 and all(len(copies) == 2 for _, _, copies in reads)  # two batches of two shards
    assert len({node for node, _, _ in reads}) == 2  # one on each node
    assert sorted(temp for _, temp, _ in reads) == sorted(cluster.temp_dirs)  # each node its own temp folder
    for _, temp, copies in reads:  # each read its own copies, in its own temp folder
        assert all(copy.startswith(temp + os.sep) for copy in copies)
    for temp in cluster.temp_dirs:  # every copy deleted, on both nodes (the workers made them and are gone)
        assert not list(Path(temp).glob("imagesieve-spool-*"))

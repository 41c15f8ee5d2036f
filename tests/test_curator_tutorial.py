"""NeMo Curator's image dedup tutorial (tutorials/image/getting-started/image_dedup_example.py) with only
its imports changed, on real tar shards with planted copies; and the parts of its workflow a Curator
user reaches: keyword arguments, eps=None, the run result, clip-retrieval embeddings."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# the tutorial's imports, changed to imagesieve (ImageEmbeddingStage: embedders.clip_embedder;
# SemanticDeduplicationWorkflow: deduplication.semantic; ParquetWriter: text.io.writer.parquet)
from imagesieve import (
    ConvertImageBatchToDocumentBatchStage,
    FilePartitioningStage,
    ImageDuplicatesRemovalStage,
    ImageEmbeddingStage,
    ImageReaderStage,
    ImageWriterStage,
    ParquetWriter,
    Pipeline,
    SemanticDeduplicationWorkflow,
)
from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.embeddings_io import EmbeddingsError
from imagesieve.tar.read import iter_samples

# ---- the tutorial's three pipelines, as written there ----


def create_image_embedding_pipeline(args: argparse.Namespace) -> Pipeline:
    """Create image curation pipeline with file partitioning, image reading, embedding, deduplication."""

    # Define pipeline
    pipeline = Pipeline(name="image_curation", description="Curate images with embeddings and quality scoring")

    # Stage 0: Partition tar files for parallel processing
    pipeline.add_stage(FilePartitioningStage(
        file_paths=args.input_wds_dataset_dir,
        files_per_partition=args.tar_files_per_partition,
        file_extensions=[".tar"],
    ))

    # Stage 1: Read images from webdataset tar files (now runs in parallel)
    pipeline.add_stage(ImageReaderStage(
        dali_batch_size=args.batch_size,
        verbose=args.verbose,
        num_threads=16,  # More threads for I/O
        num_gpus_per_worker=0.25,
    ))

    # Stage 2: Generate CLIP embeddings for images
    pipeline.add_stage(ImageEmbeddingStage(
        model_dir=args.model_dir,
        num_gpus_per_worker=args.embedding_gpus_per_worker,
        model_inference_batch_size=args.embedding_batch_size,
        verbose=args.verbose,
    ))

    # Stage 3: Convert embeddings to document batch
    pipeline.add_stage(ConvertImageBatchToDocumentBatchStage(fields=["image_id", "embedding"]))

    # Stage 4: Save embeddings to parquet file
    pipeline.add_stage(ParquetWriter(
        path=args.embeddings_dir,
    ))

    return pipeline


def create_embedding_deduplication_workflow(args: argparse.Namespace) -> Pipeline:
    """Create image deduplication pipeline with embedding deduplication."""
    return SemanticDeduplicationWorkflow(
        input_path=args.embeddings_dir,
        output_path=args.removal_parquets_dir,
        id_field="image_id",
        embedding_field="embedding",
        n_clusters=100,
        eps=0.01,
        read_kwargs={"storage_options": {}},
        write_kwargs={"storage_options": {}},
        verbose=args.verbose,
    )


def create_image_deduplication_pipeline(args: argparse.Namespace) -> Pipeline:
    """Create image deduplication pipeline with image deduplication."""
    # Define pipeline
    pipeline = Pipeline(name="image_deduplication", description="Deduplicate images with image deduplication")

    # Stage 0: Partition tar files for parallel processing
    pipeline.add_stage(FilePartitioningStage(
        file_paths=args.input_wds_dataset_dir,
        files_per_partition=args.tar_files_per_partition,
        file_extensions=[".tar"],
    ))

    # Stage 1: Read images from webdataset tar files (now runs in parallel)
    pipeline.add_stage(ImageReaderStage(
        dali_batch_size=args.batch_size,
        verbose=args.verbose,
        num_threads=16,  # More threads for I/O
        num_gpus_per_worker=0.25,
    ))

    # Stage 2: Read removal list from parquet file and filter images
    pipeline.add_stage(ImageDuplicatesRemovalStage(
        removal_parquets_dir=args.removal_parquets_dir + "/duplicates",
        duplicate_id_field="id",
        verbose=args.verbose,
    ))

    # Stage 3: Write filtered images to disk
    pipeline.add_stage(ImageWriterStage(
        output_dir=args.output_dataset_dir,
        remove_image_data=True,
        verbose=args.verbose,
    ))

    return pipeline


def run_tutorial(args: argparse.Namespace) -> None:
    """The tutorial's main() after its download step (it starts a RayClient first: none is needed here)."""
    pipeline = create_image_embedding_pipeline(args)
    print(pipeline.describe())
    pipeline.run()
    pipeline = create_embedding_deduplication_workflow(args)
    pipeline.run()
    pipeline = create_image_deduplication_pipeline(args)
    print(pipeline.describe())
    pipeline.run()


# ---- the test data and checks ----

PLANTED = {"copy_a": "00000003", "copy_b": "00000017", "copy_c": "00000045", "copy_d": "00000070"}


def planted_dataset(make_shard, tmp_path, folder: str = "shards") -> str:
    """Three shards: 116 distinct noise images (JPEG) and exact copies of four of them under other keys;
    the tutorial clusters into 100, so it needs more images than that."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(116)]
    make_shard("00000.tar", images=images[:40], folder=folder)
    make_shard("00001.tar", images=images[40:80], start=40, folder=folder)
    copies = [images[int(original)] for original in PLANTED.values()]
    make_shard("00002.tar", images=images[80:] + copies,
               keys=[f"{k:08d}" for k in range(80, 116)] + list(PLANTED), folder=folder)
    return str(tmp_path / folder)


def tutorial_args(tmp_path, shards: str, model_dir: str | None) -> argparse.Namespace:
    """The tutorial's command line defaults, with the folders of this test."""
    return argparse.Namespace(input_wds_dataset_dir=shards, output_dataset_dir=str(tmp_path / "clean"),
                              embeddings_dir=str(tmp_path / "embeddings"),
                              removal_parquets_dir=str(tmp_path / "removal"), model_dir=model_dir,
                              tar_files_per_partition=1, batch_size=100, verbose=False, embedding_batch_size=32,
                              embedding_gpus_per_worker=0.25)


def kept_keys(folder: str) -> list[str]:
    return sorted(sample.key for name in sorted(os.listdir(folder)) if name.endswith(".tar")
                  for sample in iter_samples(os.path.join(folder, name), []))


def check_planted_copies_removed(args: argparse.Namespace) -> None:
    removed = pq.read_table(os.path.join(args.removal_parquets_dir, "duplicates")).column("id").to_pylist()
    assert len(removed) == len(PLANTED)
    assert all((copy in removed) != (original in removed) for copy, original in PLANTED.items())
    kept = kept_keys(args.output_dataset_dir)
    assert len(kept) == 116 and not set(kept) & set(removed)


def test_tutorial_runs_with_a_curator_clip_model_dir(make_shard, tiny_clip, tmp_path, capsys):
    args = tutorial_args(tmp_path, planted_dataset(make_shard, tmp_path), tiny_clip)
    run_tutorial(args)
    check_planted_copies_removed(args)
    table = pq.read_table(args.embeddings_dir)
    assert table.num_rows == 120 and set(table.column_names) == {"image_id", "embedding"}
    assert "image_embedding" in capsys.readouterr().out  # pipeline.describe()


def test_tutorial_runs_with_the_default_model_when_model_dir_is_none(make_shard, tmp_path):
    pytest.importorskip("onnxruntime")
    args = tutorial_args(tmp_path, planted_dataset(make_shard, tmp_path), None)
    run_tutorial(args)
    check_planted_copies_removed(args)


# ---- the workflow's Curator arguments ----


def embeddings_file(path, ids, vectors, id_field="id", embedding_field="embeddings") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({id_field: ids, embedding_field: pa.array([list(map(float, v)) for v in vectors],
                                                                      pa.list_(pa.float32()))}), path)
    return str(path)


def unit_rows(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_eps_none_lists_no_duplicates_and_writes_each_images_best_match(tmp_path):
    vectors = unit_rows(6)
    vectors[5] = vectors[2] * 0.999 + vectors[0] * 0.001
    ids = [f"i{k}" for k in range(6)]
    path = embeddings_file(tmp_path / "emb" / "a.parquet", ids, vectors)
    out = tmp_path / "out"
    result = SemanticDeduplicationWorkflow(input_path=path, output_path=str(out), n_clusters=1, eps=None).run(
        kmeans_executor=None, pairwise_executor=LocalExecutor(num_workers=1))
    assert not (out / "duplicates").exists()
    rows = {row["id"]: row for row in pq.read_table(out / "pairwise_results").to_pylist()}
    assert rows["i2"]["max_id"] == "i5" and rows["i5"]["max_id"] == "i2" and rows["i5"]["cosine_sim_score"] > 0.99
    assert set(rows) == set(ids)
    assert result.metadata["num_duplicates"] == 0 and result.get_metadata("total_time") >= 0
    assert result.pipeline_tasks["pairwise"][0].data == [str(out / "pairwise_results" / "part-00000.parquet")]


def test_run_result_reads_as_curators(tmp_path):
    vectors = unit_rows(5)
    vectors[4] = vectors[1]
    path = embeddings_file(tmp_path / "emb" / "a.parquet", [f"i{k}" for k in range(5)], vectors)
    result = SemanticDeduplicationWorkflow(path, str(tmp_path / "out"), n_clusters=2, eps=0.01,
                                           distance_metric="cosine", which_to_keep="hard", clear_output=True,
                                           tol=1e-4, init="k-means||", embedding_dim=8,
                                           cache_kwargs={"storage_options": {}}).run()
    assert result.workflow_name == "semantic_deduplication"
    assert result.metadata["num_duplicates"] == 1 == result.duplicates
    assert {"kmeans_time", "pairwise_time", "total_time"} <= set(result.metadata)
    assert result.pipeline_tasks["duplicates"][0].data[0].endswith(os.path.join("duplicates", "part-00000.parquet"))


@pytest.mark.parametrize("kwargs, message", [
    ({"distance_metric": "l2"}, "distance_metric='l2' is not supported: eps is a cosine distance"),
    ({"input_filetype": "jsonl"}, "convert JSONL to Parquet"),
    ({"ranking_strategy": object()}, "use which_to_keep"),
    ({"read_kwargs": {"columns": ["id"]}}, r"read_kwargs keys \['columns'\] are not used here"),
])
def test_curator_arguments_that_cannot_mean_the_same_are_refused_with_what_to_do(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SemanticDeduplicationWorkflow(str(tmp_path), str(tmp_path / "out"), n_clusters=2, **kwargs)


def test_an_unknown_argument_names_what_is_accepted(tmp_path):
    with pytest.raises(TypeError, match="unknown argument 'n_cluster'.*NeMo Curator's"):
        SemanticDeduplicationWorkflow(str(tmp_path), str(tmp_path / "out"), n_cluster=2)


def test_object_storage_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="local .or mounted. folders only, not s3://bucket/emb"):
        SemanticDeduplicationWorkflow("s3://bucket/emb", str(tmp_path / "out"), n_clusters=2,
                                      read_kwargs={"storage_options": {"anon": True}})


def test_with_accepts_curators_keywords():
    stage = ImageEmbeddingStage()
    clone = stage.with_(name="embed", runtime_env={"env_vars": {"A": "1"}}, ray_stage_spec={"is_actor_stage": True},
                        xenna_stage_spec={"num_workers_per_node": 2}, num_workers=3)
    assert clone.name == "embed" and clone.num_workers() == 3 and clone.num_workers_per_node() == 2
    assert stage.name == "image_embedding" and stage.num_workers() is None


# ---- clip-retrieval / LAION embeddings ----


def clip_retrieval_folder(root, parts: list[tuple[list[str], np.ndarray]], key: str = "key") -> str:
    """img_emb/img_emb_N.npy (float16, as LAION publishes) beside metadata/metadata_N.parquet."""
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    for n, (keys, vectors) in enumerate(parts):
        np.save(root / "img_emb" / f"img_emb_{n}.npy", vectors.astype(np.float16))
        pq.write_table(pa.table({key: keys, "caption": [f"c {k}" for k in keys]}),
                       root / "metadata" / f"metadata_{n}.parquet")
    return str(root)


def test_clip_retrieval_layout_is_read_with_its_key_column(tmp_path):
    vectors = unit_rows(12, seed=3)
    vectors[10] = vectors[3]  # a copy across parts
    keys = [f"{k:09d}" for k in range(12)]
    folder = clip_retrieval_folder(tmp_path / "laion", [(keys[:7], vectors[:7]), (keys[7:], vectors[7:])])
    out = tmp_path / "out"
    summary = SemanticDeduplicationWorkflow(folder, str(out), n_clusters=2, eps=0.01, which_to_keep="first").run(
        LocalExecutor(num_workers=1))
    assert summary.images == 12
    assert pq.read_table(out / "duplicates").column("id").to_pylist() == ["000000010"]


def test_clip_retrieval_rows_must_align_with_their_metadata(tmp_path):
    folder = clip_retrieval_folder(tmp_path / "laion", [(["a", "b", "c"], unit_rows(3))])
    np.save(tmp_path / "laion" / "img_emb" / "img_emb_0.npy", unit_rows(2).astype(np.float16))
    with pytest.raises(EmbeddingsError, match=r"img_emb_0.npy: shape \(2, 8\), expected \(3, D\)"):
        SemanticDeduplicationWorkflow(folder, str(tmp_path / "out"), n_clusters=1).run(LocalExecutor(num_workers=1))
    with pytest.raises(EmbeddingsError, match="has no column 'url'"):
        SemanticDeduplicationWorkflow(folder, str(tmp_path / "out"), n_clusters=1, id_field="url").run(
            LocalExecutor(num_workers=1))


def test_find_reads_a_clip_retrieval_folder_named_by_embeddings(make_shard, tmp_path):
    from imagesieve.cli import main

    make_shard("00000.tar", n=6)
    vectors = unit_rows(6, seed=5)
    vectors[4] = vectors[1]
    folder = clip_retrieval_folder(tmp_path / "laion", [([f"{k:08d}" for k in range(6)], vectors)], key="sample")
    out = str(tmp_path / "out")
    assert main(["find", "--quiet", "--method", "semantic", "--embeddings", folder, "--embeddings-key", "sample",
                 "--eps", "0.01", "--clusters", "2", "--keep", "first", str(tmp_path / "shards"), out]) == 0
    assert pq.read_table(os.path.join(out, "duplicates")).column("id").to_pylist() == ["00000004"]


def test_readme_tutorial_block_runs_as_a_script(make_shard, tmp_path):
    """The README's "Coming from NeMo Curator" code, saved to a file as written, on planted shards."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("onnxruntime")
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("### Coming from NeMo Curator"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    planted_dataset(make_shard, tmp_path, folder=os.path.join("demo", "shards"))
    (tmp_path / "tutorial.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "tutorial.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stderr
    assert "duplicates: 4" in run.stdout
    assert len(kept_keys(str(tmp_path / "demo" / "tutorial" / "clean"))) == 116

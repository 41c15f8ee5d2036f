"""SemanticDeduplicationWorkflow on real Parquet files of embeddings: eps, keep policies, no chaining, bad input."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.embeddings_io import EmbeddingsError
from imagesieve.matching.semantic import resolve_no_chaining
from imagesieve.workflows.semantic import SemanticDeduplicationWorkflow

INLINE = LocalExecutor(num_workers=1)


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


FLOAT32 = pa.float32()


def write_embeddings(path, ids, vectors, id_field="id", embedding_field="embeddings", value_type=FLOAT32,
                     **columns) -> str:
    vectors = [None if v is None else list(map(float, v)) for v in vectors]
    table = pa.table({id_field: pa.array(ids, pa.string()), embedding_field: pa.array(vectors, pa.list_(value_type)),
                      **columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


def arc(degrees) -> np.ndarray:
    """Unit vectors in a plane at the given angles (8-d, so k-means has room)."""
    rad = np.radians(degrees)
    out = np.zeros((len(rad), 8), dtype=np.float32)
    out[:, 0], out[:, 1] = np.cos(rad), np.sin(rad)
    return out


def run(tmp_path, ids, vectors, eps=0.1, n_clusters=1, keep="first", **columns):
    path = write_embeddings(tmp_path / "emb" / "part.parquet", ids, vectors, **columns)
    out = tmp_path / "out"
    summary = SemanticDeduplicationWorkflow(path, str(out), n_clusters=n_clusters, eps=eps,
                                            which_to_keep=keep).run(INLINE)
    groups = pq.read_table(out / "groups").to_pylist()
    removed = {row["id"]: row["kept_id"] for row in groups if row["method"] != "kept"}
    dups = pq.read_table(out / "duplicates").column("id").to_pylist()
    assert sorted(removed) == dups
    return summary, removed, groups


def test_planted_duplicates_found_across_many_clusters(tmp_path):
    rng = np.random.default_rng(0)
    base = unit(rng.normal(size=(600, 32)))
    copies = unit(base[:60] + rng.normal(scale=0.01, size=(60, 32)))
    ids = [f"b{i:04d}" for i in range(600)] + [f"c{i:04d}" for i in range(60)]
    summary, removed, _ = run(tmp_path, ids, np.concatenate([base, copies]), eps=0.02, n_clusters=20)
    assert removed == {f"c{i:04d}": f"b{i:04d}" for i in range(60)}
    assert summary.clusters == 20 and summary.duplicates == 60


def test_eps_boundary(tmp_path):
    # cosine similarity of the two is cos(25.84 deg) = 0.9: a duplicate at eps 0.1 + 1e-4, not at 0.1 - 1e-4
    vectors = arc([0, np.degrees(np.arccos(0.9))])
    _, removed, _ = run(tmp_path / "a", ["a", "b"], vectors, eps=0.1 + 1e-4)
    assert removed == {"b": "a"}
    _, removed, _ = run(tmp_path / "b", ["a", "b"], vectors, eps=0.1 - 1e-4)
    assert removed == {}
    _, removed, _ = run(tmp_path / "c", ["a", "b"], arc([10, 10]), eps=1e-6)  # identical: always
    assert removed == {"b": "a"}


@pytest.mark.parametrize("eps", [0, 1, -0.1, 1.5])
def test_eps_outside_open_unit_interval_refused(eps, tmp_path):
    with pytest.raises(ValueError, match="eps must be in"):
        SemanticDeduplicationWorkflow(str(tmp_path), str(tmp_path / "out"), eps=eps)


def test_no_chaining_removes_only_what_is_near_a_kept_image(tmp_path):
    # a~b and b~c (20 degrees: similarity 0.94), a and c 40 degrees apart (0.77)
    ids = ["a", "b", "c"]
    _, removed, groups = run(tmp_path / "first", ids, arc([0, 20, 40]), eps=0.1)
    assert removed == {"b": "a"}  # c is near b only, and b is removed: c stays
    _, removed, _ = run(tmp_path / "middle", ["b", "a", "c"], arc([20, 0, 40]), eps=0.1)
    assert removed == {"a": "b", "c": "b"}
    similarity = {row["id"]: row["similarity"] for row in groups}
    assert similarity["b"] == pytest.approx(np.cos(np.radians(20)), abs=1e-5)


def test_resolve_picks_the_most_similar_kept_image():
    rank = np.arange(4)
    # 3 is near 0 (0.95) and 1 (0.97), but 1 is removed (near 0): 3 goes with 0
    keeper, sim = resolve_no_chaining(4, np.array([0, 0, 1]), np.array([1, 3, 3]), np.array([.99, .95, .97]), rank)
    assert keeper.tolist() == [0, 0, 2, 0] and sim[3] == pytest.approx(0.95)


@pytest.mark.parametrize("keep, kept", [("hard", "w"), ("easy", "z")])
def test_centroid_keep_policies(tmp_path, keep, kept):
    # one cluster, centre near 9.6 degrees: within the group w..z (0-9 degrees, all within eps of each
    # other), w is farthest from the centre (kept by "hard") and z nearest (kept by "easy")
    ids = ["w", "x", "y", "z", "far"]
    _, removed, _ = run(tmp_path, ids, arc([0, 3, 6, 9, 30]), eps=0.02, keep=keep)
    assert removed == {i: kept for i in ["w", "x", "y", "z"] if i != kept}


def test_random_keep_policy_is_seeded(tmp_path):
    vectors = arc([0, 0.5, 1.0])
    first = run(tmp_path / "1", ["a", "b", "c"], vectors, keep="random")[1]
    again = run(tmp_path / "2", ["a", "b", "c"], vectors, keep="random")[1]
    assert first == again and len(first) == 2


@pytest.mark.parametrize("keep, kept", [("first", "a"), ("resolution", "b"), ("file-size", "c"),
                                        ("column:score", "b")])
def test_finder_keep_policies(tmp_path, keep, kept):
    columns = {"width": pa.array([10, 40, 20]), "height": pa.array([10, 40, 20]),
               "file_size": pa.array([5, 6, 9]), "json.score": pa.array([0.1, 0.9, 0.5])}
    _, removed, _ = run(tmp_path, ["a", "b", "c"], arc([0, 0.5, 1.0]), keep=keep, **columns)
    assert set(removed) == {"a", "b", "c"} - {kept} and set(removed.values()) == {kept}


def test_curator_embedding_output_is_read(tmp_path):
    """Curator's image pipeline writes `image_id` and `embedding` (float64 lists, not normalised)."""
    path = write_embeddings(tmp_path / "curator" / "part.parquet", ["a", "b", "c"], arc([0, 1, 90]) * 3,
                            id_field="image_id", embedding_field="embedding", value_type=pa.float64())
    out = tmp_path / "out"
    SemanticDeduplicationWorkflow(path, str(out), n_clusters=1, id_field="image_id", embedding_field="embedding",
                                  eps=0.01).run(INLINE)
    assert pq.read_table(out / "duplicates").column("id").to_pylist() == ["b"]


@pytest.mark.parametrize("vectors, message", [
    ([[1, 0, 0], [1, 0]], "part.parquet row 1: embedding has 2 values, but the embeddings before it have 3"),
    ([[1, 0], [np.nan, 1]], "part.parquet row 1: embedding has NaN"),
    ([[1, 0], [0, 0]], "part.parquet row 1: embedding is all zeros"),
    ([[1, 0], None], "part.parquet row 1: embedding is null"),
])
def test_bad_embeddings_name_file_and_row(tmp_path, vectors, message):
    path = write_embeddings(tmp_path / "emb" / "part.parquet", ["a", "b"], vectors)
    with pytest.raises(EmbeddingsError, match=message):
        SemanticDeduplicationWorkflow(path, str(tmp_path / "out"), n_clusters=1).run(INLINE)


def test_dimension_mismatch_across_files_names_the_second_file(tmp_path):
    write_embeddings(tmp_path / "emb" / "a.parquet", ["a"], [[1, 0, 0]])
    write_embeddings(tmp_path / "emb" / "b.parquet", ["b", "c"], [[0, 1, 0], [1, 1]])
    with pytest.raises(EmbeddingsError, match=r"b.parquet row 1: embedding has 2 values"):
        SemanticDeduplicationWorkflow(str(tmp_path / "emb"), str(tmp_path / "out"), n_clusters=1).run(INLINE)


def test_repeated_id_refused(tmp_path):
    path = write_embeddings(tmp_path / "emb" / "part.parquet", ["a", "b", "a"], arc([0, 50, 90]))
    with pytest.raises(EmbeddingsError, match="part.parquet row 2: ID 'a' appears a second time"):
        SemanticDeduplicationWorkflow(path, str(tmp_path / "out"), n_clusters=1).run(INLINE)


def test_more_clusters_than_images_refused(tmp_path):
    path = write_embeddings(tmp_path / "emb" / "part.parquet", ["a", "b"], arc([0, 50]))
    with pytest.raises(ValueError, match="n_clusters is 3, more than the 2 images"):
        SemanticDeduplicationWorkflow(path, str(tmp_path / "out"), n_clusters=3).run(INLINE)


def test_alone_the_workflow_never_writes_into_its_embeddings_nor_over_a_users_files(tmp_path):
    """Hostile pass: output_path == input_path wrote duplicates/ into the embeddings folder (the next run
    read them as embeddings), and a user's summary.json in output_path was overwritten."""
    emb = tmp_path / "emb"
    write_embeddings(emb / "part.parquet", ["a", "b", "c"], arc([0, 1, 90]))
    for out in (emb, emb / "out", tmp_path):
        with pytest.raises(ValueError, match="embeddings"):
            SemanticDeduplicationWorkflow(str(emb), str(out), n_clusters=1, eps=0.1).run(INLINE)
    assert sorted(p.name for p in emb.iterdir()) == ["part.parquet"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text('{"notes": "mine"}')
    with pytest.raises(ValueError, match="holds files that this workflow did not write"):
        SemanticDeduplicationWorkflow(str(emb), str(mine), n_clusters=1, eps=0.1).run(INLINE)
    assert (mine / "summary.json").read_text() == '{"notes": "mine"}'
    out = tmp_path / "out"
    for _ in range(2):  # its own folder: rerun
        summary = SemanticDeduplicationWorkflow(str(emb), str(out), n_clusters=1, eps=0.1).run(INLINE)
    assert pq.read_table(out / "duplicates").column("id").to_pylist() == ["b"] and summary is not None


def test_embeddings_of_a_shard_gone_from_the_input_decide_nothing(make_shard, tmp_path):
    """Sixth hostile pass: the README's pipeline (EmbeddingWriterStage, then this workflow), rerun after a shard
    left the input, still read that shard's table and removed the last copies of images as duplicates of images
    no longer in the dataset. The writer records the shard each table is of; a table of a shard that is gone,
    or is another version now, is refused, naming both."""
    from imagesieve import ImageBatch, ImageObject
    from imagesieve.stages.embedding import EmbeddingWriterStage

    shards = [make_shard(f"{k:05d}.tar", n=2, start=10 * k, folder="in") for k in range(2)]
    writer = EmbeddingWriterStage(embeddings_dir=str(tmp_path / "emb"))
    vectors = unit([[1, 0, 0], [0, 1, 0], [1, 0.01, 0], [0, 0, 1]])
    for k, shard in enumerate(shards):
        images = [ImageObject(image_id=f"{10 * k + i:08d}", embedding=vectors[2 * k + i]) for i in range(2)]
        writer.process(ImageBatch(dataset_name="in", data=images, task_id=f"{k:05d}.tar",
                                  _metadata={"shard": shard, "relative_path": f"{k:05d}.tar"}))
    workflow = SemanticDeduplicationWorkflow(input_path=str(tmp_path / "emb"), output_path=str(tmp_path / "o1"),
                                             n_clusters=1, eps=0.1)
    assert workflow.run(LocalExecutor(1)).duplicates == 1  # 00000010 is a near copy of 00000000
    os.remove(shards[0])
    with pytest.raises(ValueError, match=r"00000.tar.parquet: the embeddings of .*in/00000.tar, which is no longer"):
        SemanticDeduplicationWorkflow(input_path=str(tmp_path / "emb"), output_path=str(tmp_path / "o2"),
                                      n_clusters=1, eps=0.1).run(LocalExecutor(1))
    with open(shards[1], "ab") as f:
        f.write(bytes(1024))  # another version of the shard still in the input
    os.remove(tmp_path / "emb" / "00000.tar.parquet")
    with pytest.raises(ValueError, match=r"the embeddings of an earlier version of .*in/00001.tar"):
        SemanticDeduplicationWorkflow(input_path=str(tmp_path / "emb"), output_path=str(tmp_path / "o3"),
                                      n_clusters=1, eps=0.1).run(LocalExecutor(1))

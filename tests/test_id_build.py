"""The ID index built from Parquet in bounded memory: same index as an in-memory build, exact."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_ids

from imagesieve.matching.id_build import build_index, partition_bits
from imagesieve.matching.id_folder import list_parquet_files
from imagesieve.matching.id_index import IdIndex, hash_ids, sorted_unique


def ids_files(folder, chunks: list[list]) -> list[str]:
    for k, chunk in enumerate(chunks):
        write_ids(folder, chunk, name=f"part-{k}.parquet")
    return list_parquet_files(str(folder))


def test_a_budget_smaller_than_the_data_gives_the_same_index(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"key-{i:07d}-{'x' * int(n)}" for i, n in enumerate(rng.integers(0, 30, 20_000))]
    # three files that overlap: every ID listed once or more, some in two files
    files = ids_files(tmp_path / "ids", [ids[:9000], ids[6000:15000], ids[12000:] + ids[:100]])
    budget = 64 << 10
    assert partition_bits(files, "id", budget) >= 4  # many partitions: the budget is far below the data
    target = tmp_path / "index"
    target.mkdir()
    build_index(files, "id", str(target), budget=budget)
    built, expected = IdIndex.load(str(target)), IdIndex.from_ids(sorted(set(ids)))
    assert len(built) == len(set(ids)) == 20_000
    assert np.array_equal(built.hashes, expected.hashes) and np.array_equal(built.blob, expected.blob)
    assert np.array_equal(built.offsets, expected.offsets)
    queries = ids[::7] + [f"missing-{i}" for i in range(500)]
    assert built.contains(queries).tolist() == [q in set(ids) for q in queries]


def test_integer_ids_are_converted_and_noted_once(tmp_path):
    files = ids_files(tmp_path / "ids", [[1, 2, 3]])
    pq.write_table(pa.table({"id": pa.array([4, 5], pa.int64())}), files[0].replace("part-0", "part-1"))
    target = tmp_path / "index"
    target.mkdir()
    notes = build_index(list_parquet_files(str(tmp_path / "ids")), "id", str(target), budget=1)
    assert len(notes) == 2 and all("holds integers" in n for n in notes)
    assert IdIndex.load(str(target)).contains(["1", "5", "6"]).tolist() == [True, True, False]


def test_null_ids_in_a_later_batch_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "ids" / "with-nulls.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"id": pa.array([f"k{i}" for i in range(300)] + [None])}), path, row_group_size=100)
    target = tmp_path / "index"
    target.mkdir()
    with pytest.raises(ValueError, match="with-nulls.parquet: column 'id' has 1 null IDs"):
        build_index([str(path)], "id", str(target), batch_rows=100)  # the null is in the last of 4 batches


def test_empty_id_files_give_an_empty_index(tmp_path):
    files = ids_files(tmp_path / "ids", [[], []])
    target = tmp_path / "index"
    target.mkdir()
    build_index(files, "id", str(target))
    index = IdIndex.load(str(target))
    assert len(index) == 0 and index.contains(["a"]).tolist() == [False]


def test_ids_sharing_a_hash_are_all_kept_and_repeats_dropped():
    h = np.array([7, 7, 7, 3], np.uint64)  # a forced collision: three IDs, one hash
    hashes, ids = sorted_unique(h, pa.array(["b", "a", "b", "c"]))
    assert hashes.tolist() == [3, 7, 7] and ids.to_pylist() == ["c", "a", "b"]


def test_lookup_scans_every_id_of_a_colliding_hash():
    wanted = hash_ids(["wanted"])[0]
    # two IDs stored under the same hash: the second is the one asked for
    index = IdIndex(np.array([wanted, wanted], np.uint64), np.array([0, 5, 11], np.uint32),
                    np.frombuffer(b"otherwanted", np.uint8))
    assert index.contains(["wanted", "other"]).tolist() == [True, False]


def test_block_lookup_equals_a_binary_search_over_all_hashes():
    rng = np.random.default_rng(3)
    for trial in range(40):
        n = int(rng.integers(1, 3000))
        # few distinct values: long runs of equal hashes that cross block boundaries
        hashes = np.sort(rng.integers(0, 40 if trial % 2 else 2**63, n, dtype=np.uint64))
        index = IdIndex(hashes, np.zeros(n + 1, np.uint32), np.zeros(0, np.uint8))
        queries = np.concatenate([rng.choice(hashes, 64), rng.integers(0, 50, 64, dtype=np.uint64),
                                  np.array([0, 2**64 - 1], np.uint64)])
        assert np.array_equal(index._first_at_least(queries)[0], np.searchsorted(hashes, queries))


def test_a_large_build_runs_in_a_child_process_with_the_same_result(tmp_path):
    from imagesieve.matching.id_build import build_index_isolated

    ids = [f"id-{i}" for i in range(3000)]
    files = ids_files(tmp_path / "ids", [ids[:2000], ids[1000:], [7]])
    (tmp_path / "child").mkdir()
    (tmp_path / "here").mkdir()
    notes = build_index_isolated(files, "id", str(tmp_path / "child"), child_process_rows=10)
    assert notes == build_index_isolated(files, "id", str(tmp_path / "here"))
    child, here = IdIndex.load(str(tmp_path / "child")), IdIndex.load(str(tmp_path / "here"))
    assert len(child) == 3001 and np.array_equal(child.hashes, here.hashes) and len(notes) == 1


def test_a_failing_child_build_reports_the_file(tmp_path):
    from imagesieve.matching.id_build import build_index_isolated

    path = tmp_path / "ids" / "bad.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"id": pa.array(["a", None])}), path)
    (tmp_path / "index").mkdir()
    with pytest.raises(ValueError, match="bad.parquet: column 'id' has 1 null IDs"):
        build_index_isolated([str(path)], "id", str(tmp_path / "index"), child_process_rows=0)

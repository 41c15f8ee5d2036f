"""ImageDuplicatesRemovalStage: the reference's contract, plus the compact exact index."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import write_ids

from imagesieve.executors.plan import worker_caps
from imagesieve.matching.id_index import FlatFile, IdIndex, hash_ids
from imagesieve.stages.deduplication.removal import REMOVAL_REASON, ImageDuplicatesRemovalStage
from imagesieve.tasks import ImageBatch, ImageObject


def batch(ids: list[str]) -> ImageBatch:
    return ImageBatch(dataset_name="ds", data=[ImageObject(image_id=i) for i in ids])


def kept_after(stage: ImageDuplicatesRemovalStage, ids: list[str]) -> list[str]:
    stage.setup()
    return [image.image_id for image in stage.process(batch(ids)).data]


def test_fields_and_defaults_match_the_reference(tmp_path):
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path))
    assert (stage.duplicate_id_field, stage.verbose, stage.num_workers_per_node, stage.name) == (
        "id", False, None, "image_dedup_filter")
    stage = ImageDuplicatesRemovalStage(str(tmp_path), "image_id", True, 3, "x")
    assert worker_caps(stage) == (None, 3)  # a per-node cap, as the reference's field means
    assert worker_caps(stage.with_(num_workers_per_node=2)) == (None, 2)


def test_setup_raises_when_no_parquet(tmp_path):
    (tmp_path / "notes.txt").write_text("not parquet")
    with pytest.raises(FileNotFoundError):
        ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path)).setup()


def test_setup_raises_when_folder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path / "nope")).setup()


def test_filters_with_default_id_column_keeping_order(tmp_path):
    write_ids(tmp_path, ["img2", "img4", "img5"])
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path))
    stage.setup()
    out = stage.process(batch(["img1", "img2", "img3", "img4"]))
    assert [i.image_id for i in out.data] == ["img1", "img3"]
    assert out.dataset_name == "ds"
    assert [(r.image_id, r.reason) for r in out.removed] == [("img2", "listed as duplicate"),
                                                             ("img4", "listed as duplicate")]
    assert out.samples_in == 4


def test_filters_with_custom_id_column(tmp_path):
    write_ids(tmp_path, ["x2"], column="image_id")
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path), duplicate_id_field="image_id")
    assert kept_after(stage, ["x1", "x2", "x3"]) == ["x1", "x3"]


def test_aggregates_ids_across_parquets_recursively(tmp_path):
    write_ids(tmp_path, ["a", "b", "c"], name="p1.parquet")
    write_ids(tmp_path / "sub", ["d", "e"], name="p2.parquet")
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path))
    assert kept_after(stage, ["a", "z", "e", "y", "x"]) == ["z", "y", "x"]
    assert stage.listed_ids == 5


def test_batch_that_ends_empty_and_empty_parquet(tmp_path):
    write_ids(tmp_path, ["a", "b"], name="full.parquet")
    write_ids(tmp_path, [], name="empty.parquet", type_=pa.string())
    write_ids(tmp_path, [], name="empty_null_typed.parquet")
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path))
    assert kept_after(stage, ["a", "b"]) == []
    assert kept_after(stage, []) == []


def test_missing_column_error_lists_the_columns_and_file(tmp_path):
    path = write_ids(tmp_path, ["a"], column="image_id")
    with pytest.raises(ValueError, match=r"no column 'id'.*\['image_id'\]") as info:
        ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path)).setup()
    assert path in str(info.value)


def test_integer_ids_are_converted_and_noted(tmp_path):
    write_ids(tmp_path, [1, 22], type_=pa.int64())
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path))
    assert kept_after(stage, ["1", "2", "22"]) == ["2"]
    assert any("integers" in note for note in stage._index.notes)


def test_null_ids_are_refused(tmp_path):
    write_ids(tmp_path, ["a", None], type_=pa.string())
    with pytest.raises(ValueError, match="1 null IDs"):
        ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path)).setup()


def test_not_a_parquet_file_is_named(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.parquet: not a readable Parquet file"):
        ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path)).setup()


def test_hash_collision_never_removes_an_unlisted_id():
    listed = IdIndex.from_ids(["listed-id"])
    # forge an index whose only hash is that of "other-id" but whose stored bytes are "listed-id"
    forged = IdIndex(hash_ids(["other-id"]), listed.offsets, listed.blob)
    assert not forged.contains(["other-id"])[0]
    assert listed.contains(["listed-id", "other-id"]).tolist() == [True, False]


def test_index_is_shared_on_disk_and_read_from_there(tmp_path):
    write_ids(tmp_path / "ids", [f"id{i}" for i in range(1000)])
    first = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path / "ids"))
    first.setup_on_node()
    second = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path / "ids"))
    second.setup_on_node()
    assert first._index_dir == second._index_dir  # built once, found by the second
    first.setup()
    assert isinstance(first._index.hashes, FlatFile)  # on disk, read by pread: no worker holds the IDs
    assert first._index.contains(["id999", "id1000"]).tolist() == [True, False]


def test_unicode_ids(tmp_path):
    ids = ["café", "日本語-キー", "emoji-🙂", "a" * 500]
    write_ids(tmp_path, ids)
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path))
    assert kept_after(stage, [*ids, "cafe"]) == ["cafe"]


def test_removal_works_on_the_readers_rows_and_images_appear_only_when_asked_for(tmp_path, make_shard):
    """Reader -> removal -> writer makes no object per sample; a stage that reads `data` afterwards
    gets exactly the kept images, in shard order, with their members."""
    from imagesieve.stages.io import ImageReaderStage

    shard = make_shard("00000.tar", n=6)
    write_ids(tmp_path / "ids", ["00000001", "00000004"])
    batch = ImageReaderStage().read_shard(shard, "00000.tar")
    assert batch.lazy_rows is not None and batch.num_items == 6
    removal = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path / "ids"))
    removal.setup()
    removal.process(batch)
    assert batch.lazy_rows.tolist() == [0, 2, 3, 5]  # still no objects
    assert [(r.image_id, r.reason) for r in batch.removed] == [("00000001", REMOVAL_REASON),
                                                              ("00000004", REMOVAL_REASON)]
    images = batch.data
    assert batch.lazy_rows is None
    assert [i.image_id for i in images] == ["00000000", "00000002", "00000003", "00000005"]
    assert sorted(images[0].members) == ["jpg", "json", "txt"] and images[0].image_path == f"{shard}/00000000.jpg"
    assert batch.samples_in == 6 == batch.num_items + len(batch.removed)


def test_rows_a_stage_drops_silently_from_a_lazy_batch_are_recorded_as_dropped_by_it(tmp_path, make_shard):
    """Accounting checks an in-place stage on a batch still over its table by counts; rows that vanish
    without a ledger entry take the full account and are recorded, never lost."""
    from imagesieve.executors.runner import call_stage
    from imagesieve.stages.base import ProcessingStage
    from imagesieve.stages.io import ImageReaderStage

    class SilentRowDrop(ProcessingStage[ImageBatch, ImageBatch]):
        name = "silent"

        def process(self, task: ImageBatch) -> ImageBatch:
            task.__dict__["_rows"] = task.lazy_rows[1:]  # loses the first sample, says nothing
            return task

    batch = ImageReaderStage().read_shard(make_shard("00000.tar", n=4), "00000.tar")
    [[out]] = call_stage(SilentRowDrop(), [batch])
    assert out.num_items == 3 and [(r.image_id, r.reason) for r in out.removed] == [("00000000", "dropped by silent")]
    write_ids(tmp_path / "ids", ["00000002"])
    removal = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path / "ids"))
    [[out]] = call_stage(removal, [out])  # in place, by drop_rows: the counts settle it
    assert out.lazy_rows.tolist() == [1, 3] and out.samples_in == 4 and len(out.removed) == 2

"""ID lists made by NeMo Curator (`{tar stem}_{index:06d}`, numbered over each shard's `.jpg` samples)
remove exactly the samples they name; a list naming no sample of the run is refused."""

from __future__ import annotations

import logging
import os

import fsspec
import pytest
import webdataset as wds
from conftest import EXT_FORMAT, encode, photo_tiles, write_ids

from imagesieve.cli import main
from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline import Pipeline
from imagesieve.stages.deduplication.curator_ids import jpg_numbers
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.stages.io import FilePartitioningStage, ImageReaderStage, ImageWriterStage
from imagesieve.tar.read import read_table
from imagesieve.workflows.id_lists import AmbiguousIdsError, UnmatchedIdsError
from imagesieve.workflows.remove import remove_duplicates

# 00000.tar: every sample a .jpg; 00001.tar: samples 1 and 4 are .png, which Curator's reader skips,
# so there its number for a sample is not the sample's position
EXTS = {"00000.tar": ["jpg"] * 6, "00001.tar": ["jpg", "png", "jpg", "jpg", "png", "jpg"]}


def write_shard(folder, name: str, exts: list[str], first: int) -> str:
    path = os.path.join(folder, name)
    os.makedirs(folder, exist_ok=True)
    tiles = photo_tiles()
    with wds.TarWriter(path, encoder=False, mtime=1_700_000_000) as sink:
        for i, ext in enumerate(exts):
            key = f"{first + i:09d}"
            sink.write({"__key__": key, ext: encode(tiles[first + i], EXT_FORMAT[ext]), "txt": key.encode()})
    return path


def keys_in(path: str) -> list[str]:
    return [sample["__key__"] for sample in wds.WebDataset(path, shardshuffle=False)]


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "shards"
    return {name: write_shard(folder, name, exts, 10 * n) for n, (name, exts) in enumerate(EXTS.items())}


# Curator's IDs -> the keys they name: in 00001.tar, number 2 is the 4th sample (key 000000013)
CURATOR_LIST = ["00000_000001", "00000_000005", "00001_000000", "00001_000002"]
NAMED_KEYS = {"00000.tar": ["000000001", "000000005"], "00001.tar": ["000000010", "000000013"]}


def test_jpg_numbers_count_only_samples_with_a_jpg_member(shards):
    assert jpg_numbers(read_table(shards["00001.tar"])).tolist() == [0, -1, 1, 2, -1, 3]


@pytest.mark.parametrize("scheme", ["auto", "curator"])
def test_curator_list_removes_exactly_the_named_samples(shards, tmp_path, scheme, caplog):
    write_ids(tmp_path / "dups", CURATOR_LIST)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        summary = remove_duplicates(str(tmp_path / "shards"), str(out), str(tmp_path / "dups"),
                                    executor=LocalExecutor(1), id_scheme=scheme)
    assert (summary.removed, summary.ids_not_found, summary.id_scheme) == (4, 0, "curator")
    for name, path in shards.items():
        assert keys_in(str(out / name)) == [k for k in keys_in(path) if k not in NAMED_KEYS[name]]
    said = [r.getMessage() for r in caplog.records if "NeMo Curator reader IDs" in r.getMessage()]
    assert len(said) == (1 if scheme == "auto" else 0)  # the guess is said once, for the whole run


def test_key_scheme_reads_curator_shaped_ids_as_keys(shards, tmp_path):
    write_ids(tmp_path / "dups", CURATOR_LIST)
    with pytest.raises(UnmatchedIdsError):
        remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "dups"),
                          executor=LocalExecutor(1), id_scheme="key")
    assert not os.path.exists(tmp_path / "out")  # refused before any output was written


def test_keys_that_look_like_curator_ids_stay_keys(tmp_path):
    folder = tmp_path / "shards"
    path = os.path.join(folder, "00000.tar")
    os.makedirs(folder)
    with wds.TarWriter(path, encoder=False, mtime=1_700_000_000) as sink:
        for i, tile in enumerate(photo_tiles()[:4]):
            sink.write({"__key__": f"00000_{i:06d}", "jpg": encode(tile)})
    write_ids(tmp_path / "dups", ["00000_000003"])
    summary = remove_duplicates(str(folder), str(tmp_path / "out"), str(tmp_path / "dups"),
                                executor=LocalExecutor(1))
    assert summary.id_scheme == "key"
    assert keys_in(str(tmp_path / "out" / "00000.tar")) == ["00000_000000", "00000_000001", "00000_000002"]


def test_auto_refuses_curator_shaped_ids_over_curator_shaped_keys_that_none_of_them_is(tmp_path):
    """Keys shaped as Curator IDs and a list of such IDs naming none of them (keys removed since, or
    positions): read by position they would remove other samples, so `auto` asks which they are."""
    folder = tmp_path / "shards"
    os.makedirs(folder)
    with wds.TarWriter(str(folder / "00000.tar"), encoder=False, mtime=1_700_000_000) as sink:
        for i, tile in zip([0, 1, 3, 4, 6], photo_tiles(), strict=False):
            sink.write({"__key__": f"00000_{i:06d}", "jpg": encode(tile)})
    write_ids(tmp_path / "dups", ["00000_000002", "00000_000005"])
    with pytest.raises(AmbiguousIdsError, match=r"so are the input's own keys \(such as '00000_000000'"):
        remove_duplicates(str(folder), str(tmp_path / "out"), str(tmp_path / "dups"), executor=LocalExecutor(1))
    assert not (tmp_path / "out").exists()
    summary = remove_duplicates(str(folder), str(tmp_path / "out"), str(tmp_path / "dups"), executor=LocalExecutor(1),
                                id_scheme="curator", allow_unmatched_ids=True)  # said: positions, as Curator numbers
    assert (summary.removed, summary.ids_not_found) == (1, 1)  # the 3rd sample; there is no 6th
    assert keys_in(str(tmp_path / "out" / "00000.tar")) == ["00000_000000", "00000_000001", "00000_000004",
                                                             "00000_000006"]


def test_curator_shaped_keys_in_any_named_shard_are_never_read_as_positions(tmp_path):
    """Hostile pass: the refusal above looked only at the first shard's keys, and the stage alone in a
    Pipeline fell back to positions shard by shard: one listed ID (a key of 00001.tar) also removed the
    third sample of 00000.tar... named by its stem. Both now refuse, whichever shard sorts first."""
    folder = tmp_path / "shards"
    os.makedirs(folder)
    tiles = photo_tiles()
    for name, keys in (("00000.tar", [f"x{i}" for i in range(5)]),
                       ("00001.tar", [f"00000_{i:06d}" for i in range(5)]),
                       ("00002.tar", [f"00001_{i:06d}" for i in range(5)])):
        with wds.TarWriter(str(folder / name), encoder=False, mtime=1_700_000_000) as sink:
            for i, key in enumerate(keys):
                sink.write({"__key__": key, "jpg": encode(tiles[i + 5 * int(name[4])])})
    write_ids(tmp_path / "dups", ["00001_000009"])  # a key removed since, shaped as Curator's ID of 00001.tar
    with pytest.raises(AmbiguousIdsError, match="so are the input's own keys"):
        remove_duplicates(str(folder), str(tmp_path / "out"), str(tmp_path / "dups"), executor=LocalExecutor(1),
                          allow_unmatched_ids=True)
    write_ids(tmp_path / "dups2", ["00001_000002"])  # a key of 00002.tar; as a position, a sample of 00001.tar
    summary = remove_duplicates(str(folder), str(tmp_path / "out"), str(tmp_path / "dups2"), executor=LocalExecutor(1))
    assert (summary.id_scheme, summary.removed) == ("key", 1)
    pipeline = Pipeline(name="p", stages=[FilePartitioningStage(file_paths=str(folder), files_per_partition=1),
                                          ImageReaderStage(),
                                          ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path / "dups2")),
                                          ImageWriterStage(output_dir=str(tmp_path / "alone"))])
    with pytest.raises(Exception, match="shaped as a NeMo Curator reader ID"):
        pipeline.run(LocalExecutor(1))
    assert not list((tmp_path / "alone").glob("00001.tar"))


def test_group_ids_are_numbered_across_the_group(shards, tmp_path):
    # Curator read both shards as one task: 6 .jpg samples in 00000, then 00001's from number 6 on
    write_ids(tmp_path / "dups", ["group_00000_x2_000000", "group_00000_x2_000006", "group_00000_x2_000009"])
    out = tmp_path / "out"
    summary = remove_duplicates(str(tmp_path / "shards"), str(out), str(tmp_path / "dups"),
                                executor=LocalExecutor(1))
    assert summary.removed == 3
    assert "000000000" not in keys_in(str(out / "00000.tar"))
    assert keys_in(str(out / "00001.tar")) == ["000000011", "000000012", "000000013", "000000014"]


def test_group_ids_of_shards_on_object_storage_are_numbered_across_the_group(shards, tmp_path):
    """A group's earlier shards are found by listing the shard's folder: on object storage, the objects right
    under its prefix (fsspec's in-memory file system standing in for it)."""
    memory = fsspec.filesystem("memory")
    for name, path in shards.items():
        memory.pipe_file(f"/curator-groups/{name}", open(path, "rb").read())
    try:
        write_ids(tmp_path / "dups", ["group_00000_x2_000000", "group_00000_x2_000006", "group_00000_x2_000009"])
        summary = remove_duplicates("memory://curator-groups", str(tmp_path / "out"), str(tmp_path / "dups"),
                                    executor=LocalExecutor(1))
    finally:
        memory.rm("/curator-groups", recursive=True)
    assert summary.removed == 3
    assert keys_in(str(tmp_path / "out" / "00001.tar")) == ["000000011", "000000012", "000000013", "000000014"]


def test_stage_in_a_curator_pipeline_maps_ids_by_shard_and_position(shards, tmp_path):
    write_ids(tmp_path / "dups", CURATOR_LIST)
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path / "dups"))
    stage.setup()
    batch = ImageReaderStage().read_shard(shards["00001.tar"], "00001.tar")
    assert [i.image_id for i in batch.data][:2] == ["000000010", "000000011"]  # images made: not the lazy path
    kept = stage.process(batch)
    assert [image.image_id for image in kept.data] == ["000000011", "000000012", "000000014", "000000015"]
    lazy = stage.process(ImageReaderStage().read_shard(shards["00001.tar"], "00001.tar"))
    assert lazy.image_ids() == ["000000011", "000000012", "000000014", "000000015"]


def test_unknown_scheme_is_refused(tmp_path):
    with pytest.raises(ValueError, match="id_scheme='position'"):
        ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path), id_scheme="position")


def test_list_matching_nothing_is_an_error_naming_folder_ids_and_keys(shards, tmp_path):
    write_ids(tmp_path / "dups", ["photo-1", "photo-2"])
    with pytest.raises(UnmatchedIdsError) as error:
        remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "dups"),
                          executor=LocalExecutor(1))
    message = str(error.value)
    assert str(tmp_path / "dups") in message and "'photo-1'" in message and "'000000000'" in message
    assert "--allow-unmatched-ids" in message


def test_flag_accepts_a_list_matching_nothing_and_a_rerun_still_checks_the_whole_run(shards, tmp_path):
    write_ids(tmp_path / "dups", ["photo-1"])
    out, dups = str(tmp_path / "out"), str(tmp_path / "dups")
    summary = remove_duplicates(str(tmp_path / "shards"), out, dups, executor=LocalExecutor(1),
                                allow_unmatched_ids=True)
    assert (summary.removed, summary.ids_not_found) == (0, 1)
    with pytest.raises(UnmatchedIdsError):  # every shard done: the check still covers them
        remove_duplicates(str(tmp_path / "shards"), out, dups, executor=LocalExecutor(1))


def test_check_is_over_the_whole_run_not_per_shard(shards, tmp_path):
    write_ids(tmp_path / "dups", ["000000003"])  # names a sample of 00000.tar only
    out, dups = str(tmp_path / "out"), str(tmp_path / "dups")
    summary = remove_duplicates(str(tmp_path / "shards"), out, dups, executor=LocalExecutor(1))
    assert summary.removed == 1
    os.unlink(os.path.join(out, "00001.tar"))  # one shard to redo, whose samples the list does not name
    os.unlink(os.path.join(out, "_imagesieve", "done", "00001.tar.json"))
    summary = remove_duplicates(str(tmp_path / "shards"), out, dups, executor=LocalExecutor(1))
    assert (summary.shards_skipped, summary.removed) == (1, 1)


def test_cli_id_scheme_and_allow_unmatched_ids(shards, tmp_path, capsys):
    write_ids(tmp_path / "dups", CURATOR_LIST)
    args = ["remove", "--quiet", "--duplicates", str(tmp_path / "dups"), str(tmp_path / "shards")]
    assert main([*args[:2], "--id-scheme", "curator", *args[2:], str(tmp_path / "o1")]) == 0
    assert "removed          4" in capsys.readouterr().out
    assert main([*args[:2], "--id-scheme", "key", *args[2:], str(tmp_path / "o2")]) == 1
    assert "none of the 4 IDs listed in" in capsys.readouterr().err
    assert main([*args[:2], "--id-scheme", "key", "--allow-unmatched-ids", *args[2:], str(tmp_path / "o3")]) == 0
    assert "removed          0" in capsys.readouterr().out


@pytest.mark.parametrize(("ids", "says"), [
    (["00000_000100", "00001_000200"], "read as NeMo Curator reader IDs"),  # named shards, past their samples
    (["99999_000001", "99999_000002"], "name no shard of the input"),  # shaped as Curator's, other shards
])
def test_auto_curator_list_matching_nothing_is_refused_before_any_output_is_written(shards, tmp_path, ids, says):
    write_ids(tmp_path / "dups", ids)
    out = tmp_path / "out"
    with pytest.raises(UnmatchedIdsError) as error:
        remove_duplicates(str(tmp_path / "shards"), str(out), str(tmp_path / "dups"), executor=LocalExecutor(1))
    assert str(tmp_path / "dups") in str(error.value) and says in str(error.value)
    assert not out.exists()
    out.mkdir()  # an existing OUT is left as it was too
    with pytest.raises(UnmatchedIdsError):
        remove_duplicates(str(tmp_path / "shards"), str(out), str(tmp_path / "dups"), executor=LocalExecutor(1))
    assert os.listdir(out) == []
    summary = remove_duplicates(str(tmp_path / "shards"), str(out), str(tmp_path / "dups"),
                                executor=LocalExecutor(1), allow_unmatched_ids=True)
    assert (summary.removed, sorted(os.listdir(out))[:2]) == (0, ["00000.tar", "00001.tar"])


def test_curator_list_naming_only_a_later_shard_runs(shards, tmp_path):
    write_ids(tmp_path / "dups", ["00001_000003"])  # 00001.tar's 4th .jpg sample: key 000000015
    summary = remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "dups"),
                                executor=LocalExecutor(1), id_scheme="curator")
    assert summary.removed == 1
    assert "000000015" not in keys_in(str(tmp_path / "out" / "00001.tar"))


def write_keys(path, keys: list[str]) -> None:
    """A shard of real JPEGs under the given keys."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tiles = photo_tiles()
    with wds.TarWriter(str(path), encoder=False, mtime=1_700_000_000) as sink:
        for i, key in enumerate(keys):
            sink.write({"__key__": key, "jpg": encode(tiles[i])})


def test_auto_reads_curator_shaped_ids_as_keys_when_one_is_a_key_of_another_shard(tmp_path, caplog):
    # re-sharded: 00001_000003 is a key of 00000.tar; read by position it would name 00001.tar's 00001_000001
    write_keys(tmp_path / "resharded" / "00000.tar", ["00001_000003", "00001_000004", "00000_000001"])
    write_keys(tmp_path / "resharded" / "00001.tar",
               ["00000_000000", "00000_000002", "00001_000000", "00001_000001", "00001_000002"])
    write_ids(tmp_path / "ids", ["00001_000003"], name="dups.parquet")
    out = tmp_path / "rs_out"
    with caplog.at_level(logging.WARNING):
        assert main(["remove", "--quiet", "--duplicates", str(tmp_path / "ids"), str(tmp_path / "resharded"),
                     str(out)]) == 0
    assert "NeMo Curator reader IDs" not in caplog.text
    assert keys_in(str(out / "00000.tar")) == ["00001_000004", "00000_000001"]
    assert keys_in(str(out / "00001.tar")) == ["00000_000000", "00000_000002", "00001_000000", "00001_000001",
                                              "00001_000002"]


def test_curator_id_naming_two_shards_of_one_stem_is_refused_before_any_output_is_written(tmp_path):
    write_keys(tmp_path / "amb" / "a" / "00000.tar", ["a0", "a1", "a2"])
    write_keys(tmp_path / "amb" / "b" / "00000.tar", ["b0", "b1", "b2"])
    write_ids(tmp_path / "ids", ["00000_000001"])
    out = tmp_path / "out"
    for scheme in ("auto", "curator"):
        with pytest.raises(ValueError) as error:
            remove_duplicates(str(tmp_path / "amb"), str(out), str(tmp_path / "ids"), executor=LocalExecutor(1),
                              id_scheme=scheme)
        message = str(error.value)
        assert "'00000'" in message and "00000_000001" in message and "--id-scheme key" in message
        assert str(tmp_path / "amb" / "a" / "00000.tar") in message
        assert str(tmp_path / "amb" / "b" / "00000.tar") in message
        assert not out.exists()
    # one folder given: the stem names one shard, and its sample is removed
    summary = remove_duplicates(str(tmp_path / "amb" / "b"), str(out), str(tmp_path / "ids"),
                                executor=LocalExecutor(1))
    assert summary.removed == 1 and keys_in(str(out / "00000.tar")) == ["b0", "b2"]

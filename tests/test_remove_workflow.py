"""End to end: shards written by webdataset in, shards read back by webdataset out, nothing lost."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import write_ids

from imagesieve import ImageBatch, ProcessingStage
from imagesieve.cli import main
from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline import Pipeline, PipelineError
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.stages.io import FilePartitioningStage, ImageReaderStage, ImageWriterStage
from imagesieve.tar.read import read_table
from imagesieve.tasks import ImageObject
from imagesieve.workflows.remove import remove_duplicates


def read_with_webdataset(path: str) -> list[dict]:
    return list(wds.WebDataset(path, shardshuffle=False))


def members_by_key(path: str) -> dict[str, dict[str, bytes]]:
    return {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")} for s in read_with_webdataset(path)}


@pytest.fixture
def dataset(make_shard, tmp_path):
    shards = [make_shard("00000.tar", n=10, start=0), make_shard("sub/00001.tar", n=10, start=10, ext="png")]
    listed = ["00000002", "00000003", "00000011", "00000019", "not-in-input"]
    write_ids(tmp_path / "dups", listed)
    return shards, str(tmp_path / "dups")


@pytest.mark.parametrize("workers", [1, 2])
def test_remove_keeps_bytes_and_order_and_lists_removed(dataset, tmp_path, workers):
    shards, dups = dataset
    out = str(tmp_path / "out")
    summary = remove_duplicates(str(tmp_path / "shards"), out, dups, executor=LocalExecutor(workers))
    assert (summary.shards, summary.samples_in, summary.kept, summary.removed) == (2, 20, 16, 4)
    assert (summary.ids_listed, summary.ids_not_found) == (5, 1)

    for src, rel in [(shards[0], "00000.tar"), (shards[1], "sub/00001.tar")]:
        before, after = members_by_key(src), members_by_key(os.path.join(out, rel))
        assert list(after) == [k for k in before if k not in {"00000002", "00000003", "00000011", "00000019"}]
        for key, members in after.items():
            assert members == before[key]  # every member, byte for byte, sidecars included
    removed = pq.read_table(os.path.join(out, "removed.parquet")).to_pylist()
    assert sorted(r["id"] for r in removed) == ["00000002", "00000003", "00000011", "00000019"]
    assert {r["reason"] for r in removed} == {"listed as duplicate"}
    assert {os.path.basename(r["shard"]) for r in removed} == {"00000.tar", "00001.tar"}
    index = pq.read_table(os.path.join(out, "_imagesieve", "index", "sub", "00001.tar.parquet")).to_pylist()
    assert index[0]["key"] == "00000010"
    assert index[0]["members"] == ["00000010.json", "00000010.png", "00000010.txt"]


def test_output_keeps_member_headers_and_nothing_else(dataset, tmp_path):
    shards, dups = dataset
    out = str(tmp_path / "out")
    remove_duplicates(shards[0], out, dups, executor=LocalExecutor(1))
    with tarfile.open(shards[0]) as src, tarfile.open(os.path.join(out, "00000.tar")) as dst:
        kept = [m for m in src.getmembers() if not m.name.startswith(("00000002.", "00000003."))]
        assert [(m.name, m.size, m.mtime, m.mode) for m in dst.getmembers()] == [
            (m.name, m.size, m.mtime, m.mode) for m in kept]


def test_removed_samples_are_never_decoded(make_shard, tmp_path):
    path = make_shard(n=4)
    # corrupt the image bytes of sample 1 in place; it is listed, so removal must not notice
    ref = ImageReaderStage().read_shard(path, "x").data[1].members["jpg"]
    with open(path, "r+b") as f:
        f.seek(ref.offset)
        f.write(b"\x00" * ref.size)
    write_ids(tmp_path / "dups", ["00000001"])
    summary = remove_duplicates(path, str(tmp_path / "out"), str(tmp_path / "dups"), executor=LocalExecutor(1))
    assert (summary.kept, summary.removed) == (3, 1)


def test_rerun_skips_finished_shards_and_gives_identical_output(dataset, tmp_path):
    _, dups = dataset
    out = str(tmp_path / "out")
    remove_duplicates(str(tmp_path / "shards"), out, dups, executor=LocalExecutor(1))
    first = {rel: Path(out, rel).read_bytes() for rel in ("00000.tar", "sub/00001.tar")}
    # simulate a crash: one shard's marker and output gone, a temp file left behind
    os.remove(os.path.join(out, "_imagesieve", "done", "sub", "00001.tar.json"))
    os.remove(os.path.join(out, "sub", "00001.tar"))
    Path(out, "sub", ".00001.tar.imagesieve-tmp-999").write_bytes(b"partial")
    summary = remove_duplicates(str(tmp_path / "shards"), out, dups, executor=LocalExecutor(1))
    assert summary.shards_skipped == 1 and summary.kept == 16
    assert not os.path.exists(os.path.join(out, "sub", ".00001.tar.imagesieve-tmp-999"))
    for rel, data in first.items():
        assert Path(out, rel).read_bytes() == data


def test_output_folder_that_holds_the_input_is_refused(dataset, tmp_path):
    _, dups = dataset
    with pytest.raises(ValueError, match="choose an output folder outside the input"):
        remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "shards"), dups)


def test_output_inside_input_is_refused_and_an_earlier_run_inside_it_is_never_read_back(dataset, tmp_path):
    _, dups = dataset
    with pytest.raises(ValueError, match="lies inside the input"):
        remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "shards" / "clean"), dups, executor=LocalExecutor(1))
    assert not (tmp_path / "shards" / "clean").exists()
    first = remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "clean"), dups, executor=LocalExecutor(1))
    os.rename(tmp_path / "clean", tmp_path / "shards" / "clean")  # an earlier output moved into the input
    again = remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "again"), dups, executor=LocalExecutor(1))
    assert (again.shards, again.samples_in) == (first.shards, first.samples_in) == (2, first.samples_in)


def test_pipeline_built_by_hand_with_partitioning(dataset, tmp_path):
    _, dups = dataset
    pipeline = Pipeline("by_hand", stages=[FilePartitioningStage(file_paths=str(tmp_path / "shards")),
                                           ImageReaderStage(), ImageDuplicatesRemovalStage(removal_parquets_dir=dups),
                                           ImageWriterStage(output_dir=str(tmp_path / "out"))])
    results = pipeline.run(LocalExecutor(2))
    assert sorted(t._metadata["kept"] for t in results) == [8, 8]


def test_pipeline_refuses_stages_that_do_not_fit(tmp_path):
    writer = ImageWriterStage(output_dir=str(tmp_path))
    with pytest.raises(PipelineError, match="takes ImageBatch but 'file_partitioning' makes FileGroupTask"):
        Pipeline("bad", stages=[FilePartitioningStage(file_paths=str(tmp_path)), writer]).validate()
    with pytest.raises(PipelineError, match="no stages"):
        Pipeline("empty").validate()


def test_cli_remove_and_errors(dataset, tmp_path, capsys):
    _, dups = dataset
    assert main(["remove", "--quiet", "--duplicates", dups, str(tmp_path / "shards"), str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "samples in       20" in out and "removed          4" in out and "1 not found" in out
    assert main(["remove", "--duplicates", str(tmp_path / "missing"), str(tmp_path / "shards"),
                 str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("imagesieve: error:") and "missing" in err[-1]
    assert main(["remove", "--duplicates", dups, "--id-field", "nope", str(tmp_path / "shards"),
                 str(tmp_path / "o3")]) == 1
    assert "no column 'nope'" in capsys.readouterr().err


def test_corrupt_shard_fails_the_run_naming_it_and_writes_no_output_for_it(dataset, tmp_path):
    _, dups = dataset
    (tmp_path / "shards" / "00002.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(Exception, match="00002.tar"):
        remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), dups, executor=LocalExecutor(1))
    assert not os.path.exists(tmp_path / "out" / "00002.tar")
    assert not [f for f in os.listdir(tmp_path / "out") if "imagesieve-tmp" in f]


def test_shard_with_nothing_removed_is_copied_byte_for_byte(make_shard, tmp_path):
    path = make_shard(n=5)
    write_ids(tmp_path / "dups", ["absent"])  # names no sample: accepted only when asked for
    remove_duplicates(path, str(tmp_path / "out"), str(tmp_path / "dups"), executor=LocalExecutor(1),
                      allow_unmatched_ids=True)
    assert Path(tmp_path / "out" / "00000.tar").read_bytes() == Path(path).read_bytes()


def _members_end(path: str) -> int:
    """Where the last member of a plain tar ends (its data padded to a block): the ending starts here."""
    table = read_table(path)
    return int(table.ends.max())


@pytest.mark.parametrize("both_tar_parsers", ["tarfile", "compiled parser"], indirect=True)
@pytest.mark.parametrize("ending", ["none", "two blocks", "one block", "tarfile's"])
def test_an_output_shard_ends_as_its_input_ended(make_shard, tmp_path, ending, both_tar_parsers):
    """A tar without end-of-archive blocks (truncated right after its last member), or ended by two zero
    blocks without record padding (Go's and Rust's tar writers), is copied identically when nothing is
    removed: no end blocks added, no padding; with samples removed, the output ends as the input did."""
    path = make_shard(n=5)
    data = Path(path).read_bytes()
    end = _members_end(path)
    tail = {"none": b"", "two blocks": bytes(1024), "one block": bytes(512), "tarfile's": data[end:]}[ending]
    Path(path).write_bytes(data[:end] + tail)
    write_ids(tmp_path / "none", ["absent"])
    remove_duplicates(path, str(tmp_path / "same"), str(tmp_path / "none"), executor=LocalExecutor(1),
                      allow_unmatched_ids=True)
    assert Path(tmp_path / "same" / "00000.tar").read_bytes() == Path(path).read_bytes()

    write_ids(tmp_path / "dups", ["00000001"])
    remove_duplicates(path, str(tmp_path / "out"), str(tmp_path / "dups"), executor=LocalExecutor(1))
    out = str(tmp_path / "out" / "00000.tar")
    assert Path(out).read_bytes()[_members_end(out):] == tail
    assert list(members_by_key(out)) == ["00000000", "00000002", "00000003", "00000004"]
    with tarfile.open(out) as tar:
        assert len(tar.getmembers()) == 12

    write_ids(tmp_path / "all", [f"{i:08d}" for i in range(5)])  # an empty file is no tar: an empty one ends
    remove_duplicates(path, str(tmp_path / "empty"), str(tmp_path / "all"), executor=LocalExecutor(1))
    empty = Path(tmp_path / "empty" / "00000.tar").read_bytes()
    assert empty == (tail if tail else bytes(10240))
    with tarfile.open(tmp_path / "empty" / "00000.tar") as tar:
        assert tar.getmembers() == []


@dataclass
class RebuildStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Makes fresh `ImageObject`s with the members read: the writer then writes member by member."""

    name: str = "rebuild"

    def process(self, task: ImageBatch) -> ImageBatch:
        fresh = [ImageObject(image_id=i.image_id, members=dict(i.members), shard=i.shard, image_ext=i.image_ext)
                 for i in task.data]
        return ImageBatch(data=fresh, dataset_name=task.dataset_name, _metadata=task._metadata)


def test_a_shard_written_member_by_member_ends_as_its_input_too(make_shard, tmp_path):
    path = make_shard(n=3)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:_members_end(path)])  # no end-of-archive blocks
    Pipeline("own", stages=[FilePartitioningStage(file_paths=path), ImageReaderStage(), RebuildStage(),
                            ImageWriterStage(output_dir=str(tmp_path / "out"))]).run(LocalExecutor(1))
    assert Path(tmp_path / "out" / "00000.tar").read_bytes() == Path(path).read_bytes()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_formats_long_names_global_headers_and_gzip(tmp_path, fmt):
    long_key = "deep/" * 30 + "k" * 40 if fmt != tarfile.USTAR_FORMAT else "d/" + "k" * 60
    members = [(f"{long_key}.jpg", b"\xff\xd8jpeg"), (f"{long_key}.txt", b"caption"), ("short.jpg", b"\xff\xd8x"),
               ("drop.jpg", b"\xff\xd8y")]
    shard = tmp_path / "in" / "00000.tar"
    shard.parent.mkdir()
    pax = {"comment": "global"} if fmt == tarfile.PAX_FORMAT else None
    for path, mode in [(shard, "w"), (tmp_path / "in" / "00001.tar.gz", "w:gz")]:
        with tarfile.open(path, mode, format=fmt, pax_headers=pax) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1234
                tar.addfile(info, io.BytesIO(data))
    write_ids(tmp_path / "dups", ["drop"])
    summary = remove_duplicates(str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "dups"),
                                executor=LocalExecutor(1))
    assert (summary.samples_in, summary.removed) == (6, 2)
    assert Path(tmp_path / "out" / "00001.tar.gz").read_bytes()[:2] == b"\x1f\x8b"
    for rel in ("00000.tar", "00001.tar.gz"):
        with tarfile.open(tmp_path / "out" / rel) as tar:
            assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == members[:3]


def test_img2dataset_sidecar_parquet_is_filtered_too(dataset, tmp_path):
    shards, dups = dataset
    keys = [f"{i:08d}" for i in range(10)]
    pq.write_table(pa.table({"key": [*keys, "failed-download"], "url": [f"http://x/{k}" for k in keys] + ["u"],
                             "status": ["success"] * 10 + ["failed_to_download"]}),
                   str(tmp_path / "shards" / "00000.parquet"))
    remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), dups, executor=LocalExecutor(1))
    table = pq.read_table(str(tmp_path / "out" / "00000.parquet"))
    assert table.column("key").to_pylist() == [k for k in keys if k not in {"00000002", "00000003"}] + [
        "failed-download"]
    assert not (tmp_path / "out" / "sub" / "00001.parquet").exists()  # no sidecar in, none out


def test_rerun_with_other_ids_into_a_started_folder_is_refused(dataset, tmp_path):
    _, dups = dataset
    out = str(tmp_path / "out")
    remove_duplicates(str(tmp_path / "shards"), out, dups, executor=LocalExecutor(1))
    write_ids(tmp_path / "other", ["00000004"])
    with pytest.raises(ValueError, match="holds a run with another ids_fingerprint"):
        remove_duplicates(str(tmp_path / "shards"), out, str(tmp_path / "other"), executor=LocalExecutor(1))


def test_members_of_no_sample_are_copied_and_reported(tmp_path):
    from conftest import encode, photo_tiles

    jpg = encode(photo_tiles()[0])
    (tmp_path / "in").mkdir()
    with tarfile.open(tmp_path / "in" / "00000.tar", "w") as tar:
        for name, data in [("README", b"about"), ("a.jpg", jpg), ("._a.jpg", b"appledouble"), ("b.jpg", jpg)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    write_ids(tmp_path / "dups", ["a"])
    summary = remove_duplicates(str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "dups"),
                                executor=LocalExecutor(1))
    assert (summary.kept, summary.removed, summary.loose_members) == (1, 1, 2)
    assert any("other members    2" in line for line in summary.lines())
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        assert [m.name for m in tar.getmembers()] == ["README", "._a.jpg", "b.jpg"]
        assert tar.extractfile("._a.jpg").read() == b"appledouble"


@pytest.mark.parametrize("out_before", ["absent", "empty", "holding a file"])
def test_list_matching_nothing_is_refused_before_any_output_is_written(make_shard, tmp_path, capsys, out_before):
    make_shard("00000.tar", n=4)
    make_shard("00001.tar", n=4, start=4)
    dups = tmp_path / "dups"
    write_ids(dups, ["photo-1", "photo-2"])
    out = tmp_path / "out"
    if out_before != "absent":
        out.mkdir()
    if out_before == "holding a file":
        (out / "notes.txt").write_text("mine")
    assert main(["remove", "--quiet", "--duplicates", str(dups), str(tmp_path / "shards"), str(out)]) == 1
    err = capsys.readouterr().err
    assert str(dups) in err and "'photo-1'" in err and "'00000000'" in err and "--allow-unmatched-ids" in err
    expected = {"absent": None, "empty": [], "holding a file": ["notes.txt"]}[out_before]
    assert (sorted(os.listdir(out)) if out.exists() else None) == expected  # OUT as it was: no shard, no records

    code = main(["remove", "--quiet", "--allow-unmatched-ids", "--duplicates", str(dups), str(tmp_path / "shards"),
                 str(out)])
    if out_before == "holding a file":  # a folder of the user's files is never an output
        assert code == 1 and "no imagesieve run wrote" in capsys.readouterr().err
        assert sorted(os.listdir(out)) == ["notes.txt"]
        return
    assert code == 0
    assert "removed          0" in capsys.readouterr().out
    assert members_by_key(str(out / "00001.tar")).keys() == {f"{i:08d}" for i in range(4, 8)}


def test_list_matching_some_samples_runs_and_the_check_stops_at_the_first_named_shard(make_shard, tmp_path,
                                                                                     monkeypatch):
    from imagesieve.workflows import id_lists

    for n in range(3):
        make_shard(f"{n:05d}.tar", n=4, start=4 * n)
    write_ids(tmp_path / "dups", ["not-in-input", "00000005"])  # names a sample of the second shard only
    read = []

    def counted(path: str, reader=None):
        read.append(path)
        return read_table(path, reader)

    monkeypatch.setattr(id_lists, "read_table", counted)
    summary = remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "dups"),
                                executor=LocalExecutor(1))
    assert (summary.samples_in, summary.removed, summary.ids_not_found) == (12, 1, 1)
    assert [os.path.basename(p) for p in read] == ["00000.tar", "00001.tar"]  # not the third: no read of every shard


def test_id_file_with_two_id_columns_is_refused_naming_file_and_column(dataset, tmp_path):
    folder = tmp_path / "two_columns"
    folder.mkdir()
    path = folder / "ids.parquet"
    keys = [s["__key__"] for s in read_with_webdataset(dataset[0][0])]
    pq.write_table(pa.Table.from_arrays([pa.array(keys[:1]), pa.array(keys[1:2])], names=["id", "id"]), path)
    with pytest.raises(ValueError) as error:
        remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(folder), executor=LocalExecutor(1))
    assert str(path) in str(error.value) and "'id'" in str(error.value) and "2 columns" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_shards_deleted_removed_record_redoes_the_shard(dataset, tmp_path):
    """Pass 8: deleting OUT/_imagesieve/removed/<shard>.parquet stopped the rerun with a raw "Failed to open
    local file"; the shard is redone instead, and the counts are whole again."""
    _, dups = dataset
    out = str(tmp_path / "out")
    first = remove_duplicates(str(tmp_path / "shards"), out, dups, executor=LocalExecutor(1))
    os.remove(os.path.join(out, "_imagesieve", "removed", "sub", "00001.tar.parquet"))
    again = remove_duplicates(str(tmp_path / "shards"), out, dups, executor=LocalExecutor(1))
    assert (again.shards_skipped, again.kept, again.removed) == (1, first.kept, first.removed)

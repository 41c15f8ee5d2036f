"""Ordinary mistakes and hostile files never make imagesieve delete the wrong thing (issue 8).

Each test is a case a careless or hostile user hit: a poisonable cache, user files that looked like
temp files, the wrong ID folder, stale per-shard results, two runs into one folder, skipped input.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import write_ids

from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.id_cache import INDEX_FOLDER, CacheError, build_shared_index, prune
from imagesieve.matching.id_folder import WrongIdFolderError
from imagesieve.matching.id_index import IdIndex
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.storage.runfolder import OutputInUseError, naming_errors, run_lock
from imagesieve.tar.names import ShardError
from imagesieve.tar.read import iter_samples
from imagesieve.workflows.find import FindConfig, find_duplicates
from imagesieve.workflows.remove import remove_duplicates

ONE = LocalExecutor(1)


def keys_of(folder: Path) -> set[str]:
    return {s["__key__"] for tar in sorted(folder.rglob("*.tar")) if "_imagesieve" not in tar.parts
            for s in wds.WebDataset(str(tar), shardshuffle=False)}


@pytest.fixture
def dataset(make_shard, tmp_path):
    """Two shards: 6 distinct photos, then exact copies of the first 3 under other keys."""
    make_shard("00000.tar", n=6)
    make_shard("00001.tar", n=3, keys=["copy-0", "copy-1", "copy-2"])
    return tmp_path / "shards"


# 1. the ID index cache is private to the user and keyed by content


def test_cache_folder_of_another_user_is_refused(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to make a folder owned by another user")
    cache = tmp_path / "cache"
    (cache / INDEX_FOLDER).mkdir(parents=True)
    os.chown(cache / INDEX_FOLDER, 65534, 65534)
    write_ids(tmp_path / "ids", ["a"])
    with pytest.raises(CacheError, match="belongs to another user"):
        build_shared_index(str(tmp_path / "ids"), "id", str(cache))


def test_cache_folder_that_is_a_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "planted"
    elsewhere.mkdir()
    (tmp_path / "cache").mkdir()
    os.symlink(elsewhere, tmp_path / "cache" / INDEX_FOLDER)
    write_ids(tmp_path / "ids", ["a"])
    with pytest.raises(CacheError, match="symlink"):
        build_shared_index(str(tmp_path / "ids"), "id", str(tmp_path / "cache"))
    assert not os.listdir(elsewhere)


def test_cache_is_created_private_and_an_open_one_is_made_private(tmp_path):
    write_ids(tmp_path / "ids", ["a"])
    cache = tmp_path / "cache"
    build_shared_index(str(tmp_path / "ids"), "id", str(cache))
    assert (cache / INDEX_FOLDER).stat().st_mode & 0o777 == 0o700
    os.chmod(cache / INDEX_FOLDER, 0o777)
    build_shared_index(str(tmp_path / "ids"), "id", str(cache))
    assert (cache / INDEX_FOLDER).stat().st_mode & 0o777 == 0o700


def test_a_symlinked_lock_file_is_not_followed(tmp_path):
    write_ids(tmp_path / "ids", ["a"])
    cache = tmp_path / "cache"
    entry = build_shared_index(str(tmp_path / "ids"), "id", str(cache))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.remove(entry + ".lock")
    os.symlink(victim, entry + ".lock")
    with pytest.raises(OSError):
        build_shared_index(str(tmp_path / "ids"), "id", str(cache))
    assert victim.read_text() == "precious"


def test_index_is_keyed_by_content_not_by_file_names_or_times(tmp_path):
    write_ids(tmp_path / "a", ["x", "y"])
    write_ids(tmp_path / "b", ["x", "y"], name="other-name.parquet")  # same bytes? same IDs, other name
    os.utime(tmp_path / "b" / "other-name.parquet", (1, 1))
    first = ImageDuplicatesRemovalStage(str(tmp_path / "a"))
    second = ImageDuplicatesRemovalStage(str(tmp_path / "b"))
    assert first.ids_digest == second.ids_digest
    write_ids(tmp_path / "b", ["x", "z"], name="other-name.parquet")
    assert ImageDuplicatesRemovalStage(str(tmp_path / "b")).ids_digest != first.ids_digest


def test_a_damaged_cache_entry_is_rebuilt_not_trusted(tmp_path):
    write_ids(tmp_path / "ids", ["a", "b"])
    cache = tmp_path / "cache"
    entry = build_shared_index(str(tmp_path / "ids"), "id", str(cache))
    with open(os.path.join(entry, "ids.bin"), "r+b") as f:  # a damaged disk, or a hand edit
        f.truncate(1)
    again = build_shared_index(str(tmp_path / "ids"), "id", str(cache))
    stage = ImageDuplicatesRemovalStage(str(tmp_path / "ids"), cache_dir=str(cache))
    stage.setup()
    assert again == entry and list(stage._index.contains(["a", "b", "c"])) == [True, True, False]


def test_an_index_of_another_format_is_never_read(tmp_path):
    """Another version of imagesieve, sharing the cache, left an index it hashed differently: the stage
    rebuilds rather than look IDs up in it (all would be reported "not found", none removed)."""
    write_ids(tmp_path / "ids", ["a", "b"])
    stage = ImageDuplicatesRemovalStage(str(tmp_path / "ids"), cache_dir=str(tmp_path / "cache"))
    stage.setup_on_node()
    meta_path = os.path.join(stage._index_dir, "index.json")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump({**meta, "format": 3}, f)
    with pytest.raises(ValueError, match="format 3"):
        IdIndex.load(stage._index_dir)
    stage.setup()
    assert list(stage._index.contains(["a", "b", "c"])) == [True, True, False]


def test_the_library_honours_the_cache_environment_variable(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESIEVE_CACHE_DIR", str(tmp_path / "mine"))
    write_ids(tmp_path / "ids", ["00000001"])
    remove_duplicates(str(dataset), str(tmp_path / "out"), str(tmp_path / "ids"), executor=LocalExecutor(1))
    assert len(os.listdir(tmp_path / "mine" / INDEX_FOLDER)) >= 1


def test_cache_keeps_only_the_most_recently_used_entries(tmp_path):
    cache = tmp_path / "cache"
    dated: set[str] = set()
    for k in range(5):
        write_ids(tmp_path / f"ids{k}", [f"id-{k}"])
        build_shared_index(str(tmp_path / f"ids{k}"), "id", str(cache), max_entries=3)
        for name in set(os.listdir(cache / INDEX_FOLDER)) - dated:  # the entry made now: used at time k
            os.utime(cache / INDEX_FOLDER / name, (1_000_000 + k, 1_000_000 + k))
            dated.add(name)
    entries = [n for n in os.listdir(cache / INDEX_FOLDER) if not n.endswith(".lock")]
    assert len(entries) == 3
    assert prune(str(cache / INDEX_FOLDER), 3, keep="") == []


def test_find_remove_find_remove_with_the_same_result_resumes(dataset, tmp_path):
    found, out = tmp_path / "found", tmp_path / "out"
    find_duplicates(str(dataset), str(found), FindConfig(method="exact"), executor=ONE)
    remove_duplicates(str(dataset), str(out), str(found / "duplicates"), executor=ONE)
    find_duplicates(str(dataset), str(found), FindConfig(method="exact"), executor=ONE)  # rewrites the ID file
    summary = remove_duplicates(str(dataset), str(out), str(found / "duplicates"), executor=ONE)
    assert summary.shards_skipped == 2 and summary.removed == 3


# 2. files of the user are never deleted


def test_files_named_like_temp_files_in_an_existing_output_folder_survive(dataset, tmp_path):
    """The cleanup of a rerun's temp files spares a user's files named alike, put into a run's folders."""
    out = tmp_path / "out"
    find_duplicates(str(dataset), str(tmp_path / "found"), FindConfig(method="exact"), executor=ONE)
    find_duplicates(str(dataset), str(out), FindConfig(method="exact"), executor=ONE)
    remove_duplicates(str(dataset), str(out / "clean"), str(tmp_path / "found" / "duplicates"), executor=ONE)
    (out / "clean" / "drafts").mkdir(parents=True)
    (out / "clean" / "drafts" / "thesis.tmp-final.docx").write_text("mine")
    (out / "runs" / "exp.tmp-3").mkdir(parents=True)
    (out / "runs" / "exp.tmp-3" / "log.txt").write_text("mine too")
    (out / ".notes.txt.tmp-12").write_text("and this")
    find_duplicates(str(dataset), str(out), FindConfig(method="exact"), executor=ONE)
    remove_duplicates(str(dataset), str(out / "clean"), str(tmp_path / "found" / "duplicates"), executor=ONE)
    with pytest.raises(ValueError, match="no imagesieve run wrote"):  # a folder of the user's is no output
        remove_duplicates(str(dataset), str(out / "clean" / "drafts"), str(tmp_path / "found" / "duplicates"),
                          executor=ONE)
    assert (out / "clean" / "drafts" / "thesis.tmp-final.docx").read_text() == "mine"
    assert (out / "runs" / "exp.tmp-3" / "log.txt").read_text() == "mine too"
    assert (out / ".notes.txt.tmp-12").read_text() == "and this"


def curator_style_pipeline(shards: str, ids: str, out: str):
    from imagesieve import (
        FilePartitioningStage,
        ImageDuplicatesRemovalStage,
        ImageReaderStage,
        ImageWriterStage,
        Pipeline,
    )

    return Pipeline(name="x", stages=[FilePartitioningStage(file_paths=shards, files_per_partition=1),
                                      ImageReaderStage(), ImageDuplicatesRemovalStage(removal_parquets_dir=ids),
                                      ImageWriterStage(output_dir=out)])


def tree_digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_writer_stage_alone_never_writes_over_its_input_or_a_folder_it_did_not_make(make_shard, tmp_path):
    """Hostile pass: a pipeline ending in ImageWriterStage, given the input folder or another dataset's
    folder as output_dir, replaced their shards. The commands' run-folder checks now hold for the stage."""
    for k in range(3):
        make_shard(f"{k:05d}.tar", n=4, start=4 * k)
    make_shard("00000.tar", n=2, start=50, folder="other")
    write_ids(tmp_path / "ids", ["00000001", "00000006"])
    shards, other = tmp_path / "shards", tmp_path / "other"
    before = tree_digest(tmp_path)
    for out, says in ((shards, "lies inside the output folder"), (tmp_path, "lies inside the output folder"),
                      (other, "already holds files that no imagesieve run wrote")):
        with pytest.raises(Exception, match=says):
            curator_style_pipeline(str(shards), str(tmp_path / "ids"), str(out)).run(LocalExecutor(2))
        assert tree_digest(tmp_path) == before  # nothing written, nothing made
    results = curator_style_pipeline(str(shards), str(tmp_path / "ids"), str(tmp_path / "clean")).run(ONE)
    assert sum(r._metadata["removed"] for r in results) == 2
    again = curator_style_pipeline(str(shards), str(tmp_path / "ids"), str(tmp_path / "clean")).run(ONE)
    assert sum(r._metadata["removed"] for r in again) == 2  # its own output folder: rewritten, not refused


# 3. the wrong ID folder is refused


def test_a_find_output_root_as_id_folder_is_refused_naming_the_right_one(dataset, tmp_path):
    found = tmp_path / "found"
    find_duplicates(str(dataset), str(found), FindConfig(method="exact"), executor=ONE)
    with pytest.raises(WrongIdFolderError, match=f"Pass {found / 'duplicates'}"):
        remove_duplicates(str(dataset), str(tmp_path / "out"), str(found), executor=ONE)
    with pytest.raises(WrongIdFolderError, match="table of duplicate groups"):
        remove_duplicates(str(dataset), str(tmp_path / "out"), str(found / "groups"), executor=ONE)
    with pytest.raises(WrongIdFolderError, match="hash table"):
        remove_duplicates(str(dataset), str(tmp_path / "out"), str(found / "hashes"), executor=ONE)
    assert not list((tmp_path / "out").rglob("*.tar"))


def test_a_runs_own_records_or_a_trimmed_groups_table_as_id_folder_is_refused(dataset, tmp_path):
    """A run's `_imagesieve/` tables list every sample it kept; a groups table with columns dropped still
    names the kept image of every group: either would remove what must stay."""
    write_ids(tmp_path / "ids", ["copy-0"])
    remove_duplicates(str(dataset), str(tmp_path / "ref"), str(tmp_path / "ids"), executor=ONE)
    for records in (tmp_path / "ref" / "_imagesieve", tmp_path / "ref" / "_imagesieve" / "index"):
        with pytest.raises(WrongIdFolderError, match=r"lies in a run's own records \(_imagesieve/\)"):
            remove_duplicates(str(dataset), str(tmp_path / "out"), str(records), executor=ONE, id_field="key")
    found = tmp_path / "found"
    find_duplicates(str(dataset), str(found), FindConfig(method="exact"), executor=ONE)
    (tmp_path / "trimmed").mkdir()
    pq.write_table(pq.read_table(found / "groups").select(["id", "kept_id", "method"]),
                   tmp_path / "trimmed" / "groups.parquet")
    with pytest.raises(WrongIdFolderError, match="table of duplicate groups"):
        remove_duplicates(str(dataset), str(tmp_path / "out"), str(tmp_path / "trimmed"), executor=ONE)
    assert not (tmp_path / "out").exists()


def test_a_table_of_embeddings_as_id_folder_is_refused(dataset, tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["copy-0", "00000001"], "embeddings": [[1.0, 0.0], [0.0, 1.0]]}),
                   folder / "00000.tar.parquet")
    with pytest.raises(WrongIdFolderError, match="table of embeddings"):
        remove_duplicates(str(dataset), str(tmp_path / "out"), str(folder), executor=ONE)


def test_refused_id_folder_can_be_forced(dataset, tmp_path):
    found = tmp_path / "found"
    find_duplicates(str(dataset), str(found), FindConfig(method="exact"), executor=ONE)
    summary = remove_duplicates(str(dataset), str(tmp_path / "out"), str(found / "groups"), executor=ONE,
                                check_id_folder=False)
    assert summary.removed == 6  # every member of the 3 groups, kept ones included: what was asked


def test_cli_reports_a_wrong_id_folder_in_one_line(dataset, tmp_path):
    found = tmp_path / "found"
    find_duplicates(str(dataset), str(found), FindConfig(method="exact"), executor=ONE)
    proc = subprocess.run([sys.executable, "-m", "imagesieve.cli", "remove", "--quiet", "--workers", "1",
                           "--duplicates", str(found), str(dataset), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "is the output folder of `imagesieve find`" in proc.stderr


# 4. per-shard results of another version of the input are never reused


def replace_shard(path: Path, keys: list[str], start: int) -> None:
    """Rewrite a shard with other images under the same keys (as a re-download would)."""
    from conftest import encode, photo_tiles

    tiles = photo_tiles()
    before = path.stat().st_mtime_ns
    with wds.TarWriter(str(path), encoder=False) as sink:
        for i, key in enumerate(keys):
            sink.write({"__key__": key, "jpg": encode(tiles[(start + i) % len(tiles)]), "txt": b"new"})
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a later version, whatever the clock's resolution


def test_find_rerun_after_a_shard_changed_rehashes_it(dataset, tmp_path):
    found = tmp_path / "found"
    first = find_duplicates(str(dataset), str(found), FindConfig(method="exact"), executor=ONE)
    assert first.duplicates == 3
    replace_shard(dataset / "00001.tar", ["copy-0", "copy-1", "copy-2"], start=20)  # no longer copies
    again = find_duplicates(str(dataset), str(found), FindConfig(method="exact"), executor=ONE)
    assert again.duplicates == 0
    assert pq.read_table(found / "duplicates").num_rows == 0


def test_remove_rerun_after_a_shard_changed_redoes_it(dataset, tmp_path):
    write_ids(tmp_path / "ids", ["copy-1"])
    out = tmp_path / "out"
    remove_duplicates(str(dataset), str(out), str(tmp_path / "ids"), executor=ONE)
    replace_shard(dataset / "00001.tar", ["copy-0", "copy-1", "copy-2", "copy-3"], start=20)
    summary = remove_duplicates(str(dataset), str(out), str(tmp_path / "ids"), executor=ONE)
    assert summary.shards_skipped == 1 and summary.samples_in == 10
    assert keys_of(out) == {f"{i:08d}" for i in range(6)} | {"copy-0", "copy-2", "copy-3"}


def test_a_shard_replaced_by_one_of_the_same_size_and_time_is_redone(dataset, tmp_path):
    """`cp -p` or a restored backup: another file, same size and mtime; the inode tells them apart."""
    write_ids(tmp_path / "ids", ["copy-1"])
    out = tmp_path / "out"
    remove_duplicates(str(dataset), str(out), str(tmp_path / "ids"), executor=ONE)
    shard = dataset / "00001.tar"
    with tarfile.open(shard) as tar:
        offset = tar.getmember("copy-0.txt").offset_data
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x20  # one byte of a caption, same length
    replacement = tmp_path / "replacement.tar"
    replacement.write_bytes(bytes(data))
    st = shard.stat()
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, shard)
    assert (shard.stat().st_size, shard.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    summary = remove_duplicates(str(dataset), str(out), str(tmp_path / "ids"), executor=ONE)
    assert summary.shards_skipped == 1  # 00000.tar only
    with tarfile.open(out / "00001.tar") as tar:
        assert tar.extractfile("copy-0.txt").read() == bytes(data[offset:offset + tar.getmember("copy-0.txt").size])


def _edit_caption(shard, at: int = 0) -> None:
    """Change one byte (the `at`th) of the first caption of `shard` in place, keeping its size."""
    with tarfile.open(shard) as tar:
        offset = next(m for m in tar.getmembers() if m.name.endswith(".txt")).offset_data + at
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x20
    shard.write_bytes(bytes(data))


def test_an_output_a_user_replaced_is_never_overwritten_when_its_shard_is_redone(dataset, tmp_path):
    """OUT/00001.tar edited by its user, then the input shard changes: the redo must not replace the
    user's file (no record of ours names its version); a folder copied with its times (`cp -p`) still
    resumes."""
    write_ids(tmp_path / "ids", ["copy-1"])
    out = tmp_path / "out"
    remove_duplicates(str(dataset), str(out), str(tmp_path / "ids"), executor=ONE)
    copied = tmp_path / "copied"
    shutil.copytree(out, copied, copy_function=shutil.copy2)  # new inodes, same sizes and times
    mine = b"the user's own bytes"
    (out / "00001.tar").write_bytes(mine)
    _edit_caption(dataset / "00001.tar")
    with pytest.raises(ValueError, match=r"00001\.tar: this output file is not the one imagesieve wrote"):
        remove_duplicates(str(dataset), str(out), str(tmp_path / "ids"), executor=ONE)
    assert (out / "00001.tar").read_bytes() == mine
    assert sorted(os.listdir(out)) == ["00000.tar", "00001.tar", "_imagesieve", "removed.parquet", "summary.json"]
    summary = remove_duplicates(str(dataset), str(copied), str(tmp_path / "ids"), executor=ONE)
    assert (summary.shards_skipped, summary.removed) == (1, 1)
    # pass 9: an edit that keeps the size (a caption fixed in place) was deleted as ours before the redo
    _edit_caption(copied / "00000.tar", at=1)  # not the byte the input's edit changes
    os.utime(copied / "00000.tar", ns=(0, (copied / "00000.tar").stat().st_mtime_ns + 10**9))
    edited = (copied / "00000.tar").read_bytes()
    _edit_caption(dataset / "00000.tar")
    with pytest.raises(ValueError, match=r"00000\.tar: this output file is not the one imagesieve wrote"):
        remove_duplicates(str(dataset), str(copied), str(tmp_path / "ids"), executor=ONE)
    assert (copied / "00000.tar").read_bytes() == edited


# 5. two runs into one output folder


def test_a_second_run_into_a_busy_output_folder_fails_at_once(dataset, tmp_path):
    write_ids(tmp_path / "ids", ["copy-1"])
    out = tmp_path / "out"
    out.mkdir()
    with run_lock(str(out), "remove"):
        with pytest.raises(OutputInUseError, match="being written by another imagesieve run"):
            remove_duplicates(str(dataset), str(out), str(tmp_path / "ids"), executor=ONE)
        with pytest.raises(OutputInUseError):
            find_duplicates(str(dataset), str(out), FindConfig(method="exact"), executor=ONE)
    assert remove_duplicates(str(dataset), str(out), str(tmp_path / "ids"), executor=ONE).removed == 1


def test_the_lock_of_a_killed_run_does_not_block_the_next(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys\n"
                               "from imagesieve.storage.runfolder import run_lock\n"
                               f"with run_lock({str(out)!r}, 'remove'):\n    print('held', flush=True)\n"
                               "    sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    write_ids(tmp_path / "ids", ["copy-1"])
    with pytest.raises(OutputInUseError, match=f"pid {holder.pid}"):
        remove_duplicates(str(dataset), str(out), str(tmp_path / "ids"), executor=ONE)
    holder.kill()
    holder.wait()
    assert remove_duplicates(str(dataset), str(out), str(tmp_path / "ids"), executor=ONE).removed == 1


# 6. no input is skipped silently, and distinct shards never share work files


@pytest.mark.parametrize("name, compress", [("00000.tar.gz", None), ("00000.tar.bz2", "bz2"), ("00000.tgz", "gz")])
def test_an_output_shard_is_compressed_as_its_input_was_whatever_its_name(make_shard, tmp_path, name, compress):
    """A plain tar named .tar.gz crashed the writer (found by a hostile pass); each output now takes its
    input's actual format, and tar tools read it back."""
    import bz2
    import gzip

    plain = Path(make_shard("plain.tar", n=4, folder="made"))
    data = plain.read_bytes()
    (tmp_path / "shards").mkdir()
    packed = {None: lambda b: b, "gz": gzip.compress, "bz2": bz2.compress}[compress](data)
    (tmp_path / "shards" / name).write_bytes(packed)
    write_ids(tmp_path / "ids", ["00000002"])
    summary = remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE)
    assert summary.removed == 1
    out = (tmp_path / "out" / name).read_bytes()
    assert out[:3] == packed[:3]  # the same magic bytes: compressed alike, or plain
    with tarfile.open(tmp_path / "out" / name) as tar:
        assert sorted({n.split(".")[0] for n in tar.getnames()}) == ["00000000", "00000001", "00000003"]
    remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "again"), str(tmp_path / "ids"), executor=ONE)
    assert (tmp_path / "again" / name).read_bytes() == out  # reproducible: no temp name or time in a gzip header


def test_a_refused_run_creates_nothing(dataset, tmp_path, monkeypatch):
    """Found by a hostile pass: `find in in` was refused but left a lock in the input, and a run on a
    missing input created its output folder (a literal './~/o' for a quoted '~')."""
    with pytest.raises(ValueError, match="is the input"):
        find_duplicates(str(dataset), str(dataset), FindConfig(method="phash"), executor=ONE)
    assert not (dataset / "_imagesieve").exists()
    monkeypatch.chdir(tmp_path)
    from imagesieve.workflows.dedup import dedup

    with pytest.raises(FileNotFoundError, match="quoted '~' is not expanded"):
        dedup("~/does-not-exist", "~/o", executor=ONE)
    assert not (tmp_path / "~").exists()


def test_shards_under_a_symlinked_folder_are_read_and_a_link_loop_ends(make_shard, tmp_path):
    make_shard("00000.tar", n=4)
    make_shard("00001.tar", n=4, start=4, folder="elsewhere")
    os.symlink(tmp_path / "elsewhere", tmp_path / "shards" / "linked")
    os.symlink(tmp_path / "shards", tmp_path / "shards" / "loop")
    write_ids(tmp_path / "ids", ["00000005"])
    summary = remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE)
    assert summary.shards == 2 and summary.samples_in == 8 and summary.removed == 1
    assert (tmp_path / "out" / "linked" / "00001.tar").exists()


def test_x_tar_and_x_tar_gz_keep_separate_results(make_shard, tmp_path):
    plain = make_shard("x.tar", n=3)
    with tarfile.open(tmp_path / "shards" / "x.tar.gz", "w:gz") as gz, tarfile.open(plain) as src:
        for member in src.getmembers():
            member.name = "gz-" + member.name
            gz.addfile(member, src.extractfile(member))
    write_ids(tmp_path / "ids", ["00000001", "gz-00000002"])
    summary = remove_duplicates(str(tmp_path / "shards"), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE)
    assert (summary.shards, summary.samples_in, summary.removed, summary.ids_not_found) == (2, 6, 2, 0)
    removed = pq.read_table(tmp_path / "out" / "removed.parquet")
    assert sorted(removed.column("id").to_pylist()) == ["00000001", "gz-00000002"]


# 7. hostile tar headers fail fast and name the file


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n"
    length = len(body) + 2
    length = len(body) + len(str(length))
    return f"{length}{body}".encode()


def block(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


@pytest.mark.parametrize("value", ["-1536", "abc"])
def test_a_bad_pax_size_is_refused_without_hanging(tmp_path, value):
    record = pax_record("size", value)
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    member = tarfile.TarInfo("k.jpg")
    member.size = 3
    path = tmp_path / "bad.tar"
    path.write_bytes(pax.tobuf(tarfile.USTAR_FORMAT) + block(record) + member.tobuf(tarfile.USTAR_FORMAT)
                     + block(b"abc") + bytes(1024))
    with ThreadPoolExecutor(1) as pool:  # a parser that loops would never return: fail, do not hang the suite
        reading = pool.submit(lambda: list(iter_samples(str(path))))
        with pytest.raises(ShardError, match=r"bad\.tar.*bad PAX size"):
            reading.result(timeout=120)


# 10. smaller cases


def test_a_threshold_past_the_limit_is_refused_up_front():
    with pytest.raises(ValueError, match="threshold must be within 0..32"):
        FindConfig(threshold=33)


def test_too_many_pairs_is_a_clear_error_not_memory_exhaustion():
    import numpy as np

    from imagesieve.matching.near_search import TooManyPairsError, near_pairs

    codes = np.random.default_rng(0).integers(0, 2**63, 2000, dtype=np.uint64)
    with pytest.raises(TooManyPairsError, match="threshold is too loose"):
        near_pairs(codes, 32, max_pairs=10_000)


def test_keep_column_that_no_sample_has_is_an_error(dataset, tmp_path):
    with pytest.raises(ValueError, match="no sample has a value for 'nosuch'"):
        find_duplicates(str(dataset), str(tmp_path / "f"), FindConfig(keep="column:nosuch"), executor=ONE)


def test_keep_column_that_is_not_a_number_is_an_error_naming_it(dataset, tmp_path):
    with pytest.raises(ValueError, match="sample '00000000': .json field 'key' must be a number to rank by, "
                                         "but holds '00000000'"):
        find_duplicates(str(dataset), str(tmp_path / "f"), FindConfig(keep="column:key"), executor=ONE)


def test_integer_ids_for_zero_padded_keys_are_refused(dataset, tmp_path):
    write_ids(tmp_path / "ids", [1, 2], type_=pa.int64())
    with pytest.raises(ValueError, match="leading zeros"):
        remove_duplicates(str(dataset), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE)


def test_skipped_reasons_are_the_same_in_every_run(make_shard, tmp_path):
    path = make_shard("00000.tar", n=2)
    with wds.TarWriter(str(tmp_path / "shards" / "00001.tar"), encoder=False) as sink:
        sink.write({"__key__": "bad", "jpg": b"not an image at all"})
    reasons = []
    for run in range(2):
        find_duplicates(os.path.dirname(path), str(tmp_path / f"f{run}"), FindConfig(on_error="skip"), executor=ONE)
        reasons.append(pq.read_table(tmp_path / f"f{run}" / "skipped.parquet").column("reason").to_pylist())
    assert reasons[0] == reasons[1] and "0x" not in reasons[0][0]


def test_members_of_no_sample_keep_their_place_so_an_untouched_shard_is_identical(tmp_path):
    shard = tmp_path / "shards" / "00000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("a.jpg", b"\xff\xd8a"), ("README", b"hello"), ("b.jpg", b"\xff\xd8b")]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    write_ids(tmp_path / "ids", ["zzz"])  # names no sample: accepted only when asked for
    remove_duplicates(str(shard.parent), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE,
                      allow_unmatched_ids=True)
    assert (tmp_path / "out" / "00000.tar").read_bytes() == shard.read_bytes()


def test_a_full_disk_names_the_file_being_written(tmp_path):
    import errno

    with pytest.raises(OSError, match=r"No space left on device while writing .*out\.tar"), \
            naming_errors(str(tmp_path / "out.tar")):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_sample_data_refuses_a_shard_size_below_one(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "imagesieve.cli", "sample-data", "--shard-size", "0",
                           str(tmp_path / "s")], capture_output=True, text=True)
    assert proc.returncode == 2 and "must be 1 or more" in proc.stderr


def test_a_closed_pipe_is_not_an_error(dataset, tmp_path):
    write_ids(tmp_path / "ids", ["copy-1"])
    proc = subprocess.Popen([sys.executable, "-m", "imagesieve.cli", "remove", "--quiet", "--workers", "1",
                             "--duplicates", str(tmp_path / "ids"), str(dataset), str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before anything is printed, as `| head -0` would
    stderr = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Traceback" not in stderr and "Broken pipe" not in stderr


def test_progress_in_a_log_file_is_lines_not_carriage_returns():
    from imagesieve.progress import ShardProgress
    from imagesieve.tasks import FileGroupTask

    log = io.StringIO()
    with ShardProgress(3, enabled=True, desc="remove", every=0, stream=log) as bar:
        for _ in range(3):
            bar.update(None, [FileGroupTask(dataset_name="d", data=[], _metadata={"samples_in": 5})])
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines[0] == "remove: 3 shards (0 already done)"
    assert lines[-1].startswith("remove: 3/3 shards, 15 samples")


def test_progress_counts_a_shard_hashed_in_parts_as_one_shard():
    from imagesieve.progress import ShardProgress
    from imagesieve.tasks import FileGroupTask

    log = io.StringIO()
    with ShardProgress(2, enabled=True, desc="hash", every=3600, stream=log) as bar:
        bar.update(FileGroupTask(dataset_name="d", data=[]), [FileGroupTask(dataset_name="d", data=[])])
        for index in range(3):
            part = FileGroupTask(dataset_name="d", data=[], _metadata={"part": (index, 3)})
            bar.update(part, [FileGroupTask(dataset_name="d", data=[], _metadata={"samples_in": 4})])
    assert log.getvalue().splitlines()[-1].startswith("hash: 2/2 shards, 12 samples")


def _append_member(shard: str, name: str, data: bytes) -> None:
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_an_empty_image_member_is_skipped_with_on_error_skip_and_copied_by_remove(make_shard, tmp_path):
    shard = make_shard("00000.tar", n=3)
    _append_member(shard, "00000099.jpg", b"")
    _append_member(shard, "00000099.txt", b"caption of an empty image")
    with pytest.raises(Exception, match="empty"):
        find_duplicates(shard, str(tmp_path / "strict"), FindConfig())
    found = find_duplicates(shard, str(tmp_path / "found"), FindConfig(on_error="skip"))
    skipped = pq.read_table(tmp_path / "found" / "skipped.parquet").to_pylist()
    assert found.images == 4 and [row["id"] for row in skipped] == ["00000099"] and "empty" in skipped[0]["reason"]
    write_ids(tmp_path / "ids", ["00000001"])
    summary = remove_duplicates(shard, str(tmp_path / "out"), str(tmp_path / "ids"))
    assert summary.kept == 3 and summary.removed == 1
    members = {m.name: m.size for m in tarfile.open(tmp_path / "out" / "00000.tar")}
    assert members["00000099.jpg"] == 0 and "00000001.jpg" not in members


def test_fifos_and_broken_symlinks_in_an_image_folder_are_left_out_and_named(tmp_path, caplog):
    from conftest import encode, photo_tiles

    folder = tmp_path / "images"
    folder.mkdir()
    for i, tile in enumerate(photo_tiles()[:3]):
        (folder / f"{i}.jpg").write_bytes(encode(tile))
    os.mkfifo(folder / "pipe.jpg")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    write_ids(tmp_path / "ids", ["1.jpg"])
    summary = remove_duplicates(str(folder), str(tmp_path / "out"), str(tmp_path / "ids"))  # a FIFO read would hang
    assert (summary.samples_in, summary.kept, summary.removed) == (3, 2, 1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(("_", "summary"))) == \
        ["0.jpg", "2.jpg", "removed.parquet"]
    assert "pipe.jpg: left out, not a regular file (a FIFO)" in caplog.text
    assert "gone.png: left out, not a regular file (a broken symlink)" in caplog.text


def test_link_with_tar_shards_is_refused_and_a_file_for_the_id_folder_is_named(make_shard, tmp_path):
    shard = make_shard("00000.tar", n=3)
    ids = write_ids(tmp_path / "ids", ["00000001"])
    with pytest.raises(ValueError, match="link"):
        remove_duplicates(shard, str(tmp_path / "out"), str(tmp_path / "ids"), link=True)
    with pytest.raises(NotADirectoryError, match="is a file; pass the folder"):
        remove_duplicates(shard, str(tmp_path / "out2"), ids)


def test_an_image_folder_rerun_drops_other_files_that_left_the_input(tmp_path):
    from conftest import encode, photo_tiles

    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    for i, tile in enumerate(photo_tiles()[:2]):
        (folder / "a" / f"{i}.jpg").write_bytes(encode(tile))
    (folder / "a" / "0.txt").write_text("a caption")
    (folder / "LICENSE").write_text("CC-BY")
    write_ids(tmp_path / "ids", ["a/1.jpg"])
    out = tmp_path / "out"
    remove_duplicates(str(folder), str(out), str(tmp_path / "ids"))
    assert (out / "LICENSE").exists() and (out / "a" / "0.txt").exists()
    (out / "notes.md").write_text("the user's own")
    (folder / "LICENSE").unlink()
    (folder / "a" / "0.txt").unlink()
    remove_duplicates(str(folder), str(out), str(tmp_path / "ids"))
    assert not (out / "LICENSE").exists() and not (out / "a" / "0.txt").exists()
    assert (out / "notes.md").read_text() == "the user's own" and (out / "a" / "0.jpg").exists()


def test_a_file_of_a_find_run_passed_as_the_id_folder_points_to_its_duplicates(make_shard, tmp_path):
    shard = make_shard("00000.tar", n=3)
    find_duplicates(shard, str(tmp_path / "run"), FindConfig())
    for passed in ("groups/part-00000.parquet", "duplicates/part-00000.parquet"):
        with pytest.raises(NotADirectoryError, match=f"e.g. '{tmp_path / 'run' / 'duplicates'}'"):
            remove_duplicates(shard, str(tmp_path / "out"), str(tmp_path / "run" / passed))


def test_the_removed_list_never_lands_in_the_input_nor_replaces_a_file_it_did_not_write(dataset, tmp_path):
    """Hostile pass: `removed_path=` an input shard turned the shard into a Parquet file; `exclude=` let a
    run write inside INPUT. Both refused before any work; a list of ours may be rewritten."""
    write_ids(tmp_path / "ids", ["copy-1"])
    before = tree_digest(dataset)
    notes = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"title": ["mine"]}), notes)
    for path in (dataset / "00000.tar", dataset / "removed.parquet", notes):
        with pytest.raises(ValueError, match="removed list .* lies inside the input|is not a list of removed samples"):
            remove_duplicates(str(dataset), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE,
                              removed_path=str(path))
    with pytest.raises(ValueError, match="lies inside"):
        remove_duplicates(str(dataset), str(dataset / "out"), str(tmp_path / "ids"), executor=ONE,
                          exclude=str(tmp_path / "elsewhere"))
    assert tree_digest(dataset) == before and pq.read_table(notes).column("title").to_pylist() == ["mine"]
    elsewhere = tmp_path / "lists" / "removed.parquet"
    elsewhere.parent.mkdir()
    for _ in range(2):  # its own list: rewritten on a rerun
        remove_duplicates(str(dataset), str(tmp_path / "out"), str(tmp_path / "ids"), executor=ONE,
                          removed_path=str(elsewhere))
    assert pq.read_table(elsewhere).column("id").to_pylist() == ["copy-1"]


def test_the_writer_stage_alone_never_writes_into_a_finished_runs_folder(dataset, tmp_path):
    """Hostile pass: a pipeline's writer given a dedup's OUT/shards replaced its shards and left its
    removed list and summary describing samples that were back."""
    from imagesieve.workflows.dedup import dedup

    dedup_out = tmp_path / "d"
    dedup(str(dataset), str(dedup_out), executor=ONE)
    before = tree_digest(dedup_out)
    write_ids(tmp_path / "ids", ["copy-1"])
    for out in (dedup_out, dedup_out / "shards"):
        with pytest.raises(Exception, match="is the folder of an imagesieve (dedup|remove) run"):
            curator_style_pipeline(str(dataset), str(tmp_path / "ids"), str(out)).run(ONE)
    assert tree_digest(dedup_out) == before

"""img2dataset-style folders (NNNNN.tar, NNNNN.parquet with a `key` column, NNNNN_stats.json): a rerun
skips what is done, redoes a shard whose sidecar changed or left, and never keeps a stale output sidecar."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_ids

from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline import Pipeline
from imagesieve.stages.io import FilePartitioningStage, ImageReaderStage, ImageWriterStage
from imagesieve.workflows.dedup import dedup
from imagesieve.workflows.find import FindConfig
from imagesieve.workflows.remove import remove_duplicates

ONE = LocalExecutor(1)


@pytest.fixture
def downloaded(make_shard, tmp_path) -> Path:
    """Two shards as img2dataset writes them: each with its metadata table (one row per attempted sample,
    a failed download among them) and its stats."""
    folder = tmp_path / "shards"
    for number in range(2):
        stem = f"{number:05d}"
        make_shard(f"{stem}.tar", n=4, start=4 * number)
        keys = [f"{4 * number + i:08d}" for i in range(4)]
        pq.write_table(pa.table({"key": [*keys, f"{stem}failed"], "status": ["success"] * 4 + ["failed_to_download"],
                                 "caption": [f"caption {k}" for k in [*keys, "x"]]}), folder / f"{stem}.parquet")
        (folder / f"{stem}_stats.json").write_text(json.dumps({"count": 5, "successes": 4, "failed_to_download": 1,
                                                               "status_dict": {"success": 4}}))
    write_ids(tmp_path / "ids", ["00000001", "00000006"])
    return folder


def remove(downloaded: Path, out: Path):
    return remove_duplicates(str(downloaded), str(out), str(downloaded.parent / "ids"), executor=ONE)


def test_an_unchanged_rerun_skips_every_shard_and_a_killed_one_redoes_only_the_unfinished(downloaded, tmp_path):
    """The listing's version covers the sidecars; the done marker recorded the shard's alone, so every
    rerun redid every shard with sidecars ("2 shards (0 already done)")."""
    out = tmp_path / "out"
    first = remove(downloaded, out)
    assert (first.shards, first.shards_skipped, first.removed) == (2, 0, 2)
    again = remove(downloaded, out)
    assert (again.shards_skipped, again.removed) == (2, 2)
    os.remove(out / "_imagesieve" / "done" / "00001.tar.json")  # killed before shard 00001 was written
    os.remove(out / "00001.tar")  # (killed after its rename: test_guarantees.py's stalled runs)
    resumed = remove(downloaded, out)
    assert (resumed.shards_skipped, resumed.removed) == (1, 2)


def test_a_changed_sidecar_redoes_its_shard(downloaded, tmp_path):
    out = tmp_path / "out"
    remove(downloaded, out)
    table = pq.read_table(downloaded / "00000.parquet")
    pq.write_table(table.set_column(2, "caption", pa.array(["new"] * 5)), downloaded / "00000.parquet")
    again = remove(downloaded, out)
    assert again.shards_skipped == 1
    assert pq.read_table(out / "00000.parquet").column("caption").to_pylist() == ["new"] * 4


@pytest.mark.parametrize("gone", ["both", "table", "stats"])
def test_sidecars_deleted_from_the_input_leave_the_output_too(downloaded, tmp_path, gone):
    out = tmp_path / "out"
    remove(downloaded, out)
    assert (out / "00001.parquet").exists() and (out / "00001_stats.json").exists()
    if gone in ("both", "table"):
        os.remove(downloaded / "00001.parquet")
    if gone in ("both", "stats"):
        os.remove(downloaded / "00001_stats.json")
    again = remove(downloaded, out)
    assert again.shards_skipped == 1  # shard 00000 untouched; 00001 redone
    assert (out / "00001.parquet").exists() == (gone == "stats")
    assert (out / "00001_stats.json").exists() == (gone == "table")
    assert (out / "00000.parquet").exists() and (out / "00000_stats.json").exists()


def test_dedup_reruns_skip_and_drop_sidecars_the_input_lost(downloaded, tmp_path):
    out = tmp_path / "d"
    dedup(str(downloaded), str(out), FindConfig(), executor=ONE)
    marker = out / "shards" / "_imagesieve" / "done" / "00000.tar.json"
    stamp = marker.stat().st_mtime_ns
    dedup(str(downloaded), str(out), FindConfig(), executor=ONE)
    assert marker.stat().st_mtime_ns == stamp  # unchanged input: the shard is skipped, not rewritten
    os.remove(downloaded / "00001.parquet")
    os.remove(downloaded / "00001_stats.json")
    dedup(str(downloaded), str(out), FindConfig(), executor=ONE)
    assert marker.stat().st_mtime_ns == stamp
    assert not (out / "shards" / "00001.parquet").exists() and not (out / "shards" / "00001_stats.json").exists()


def test_the_writer_alone_removes_an_output_sidecar_whose_input_left(downloaded, tmp_path):
    """A pipeline of one's own (no workflow discarding earlier outputs): the writer itself removes the
    sidecars it wrote before for a shard whose input has none now, and no file of another's."""
    out = tmp_path / "own"

    def run() -> None:
        Pipeline("own", stages=[FilePartitioningStage(file_paths=str(downloaded)), ImageReaderStage(),
                                ImageWriterStage(output_dir=str(out))]).run(ONE)

    run()
    assert (out / "00001.parquet").exists() and (out / "00001_stats.json").exists()
    os.remove(downloaded / "00001.parquet")
    os.remove(downloaded / "00001_stats.json")
    run()
    assert not (out / "00001.parquet").exists() and not (out / "00001_stats.json").exists()
    assert (out / "00000.parquet").exists() and (out / "00000_stats.json").exists()
    record = json.loads((out / "_imagesieve" / "done" / "00001.tar.json").read_text())
    assert (record["sidecar"], record["img2dataset_stats"]) == ("none", "none")
    (out / "00001.parquet").write_bytes(b"the user's own file")  # not ours: never deleted
    run()
    assert (out / "00001.parquet").read_bytes() == b"the user's own file"


def test_a_shards_table_that_would_land_on_the_runs_own_list_is_refused_before_any_write(downloaded, tmp_path):
    """Pass 7: a shard `removed.tar` with its table `removed.parquet`: the table and the run's removed list
    were both written to OUT/removed.parquet, one silently replacing the other. Refused, naming both; a
    `removed.tar` without a table, or with the list written elsewhere, runs."""
    for ext in (".tar", ".parquet", "_stats.json"):
        os.rename(downloaded / f"00000{ext}", downloaded / f"removed{ext}")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"removed\.tar: its img2dataset table would be written to .*removed\.parquet"):
        remove(downloaded, out)
    assert not out.exists()
    elsewhere = remove_duplicates(str(downloaded), str(tmp_path / "out2"), str(tmp_path / "ids"), executor=ONE,
                                  removed_path=str(tmp_path / "removed-list.parquet"))
    assert elsewhere.removed == 2 and pq.read_table(tmp_path / "out2" / "removed.parquet").num_rows == 4
    os.remove(downloaded / "removed.parquet")
    assert remove(downloaded, tmp_path / "out3").removed == 2


def test_a_users_file_where_a_shards_table_goes_is_never_replaced_nor_deleted(downloaded, tmp_path):
    """Pass 10: output tables were written and deleted with no ownership check: a user's OUT/00001.parquet
    was overwritten when the input gained that table, and a user's replacement of OUT/00000.parquet was
    deleted when the input's table went."""
    aside = tmp_path / "aside.parquet"
    os.rename(downloaded / "00001.parquet", aside)
    out = tmp_path / "out"
    remove(downloaded, out)
    mine = pa.table({"mine": [1, 2]})
    pq.write_table(mine, out / "00001.parquet")  # where no table of ours is
    os.rename(aside, downloaded / "00001.parquet")  # the input gains it: shard 00001 is redone
    with pytest.raises(ValueError, match=r"00001\.parquet: this output file is not the one imagesieve wrote"):
        remove(downloaded, out)
    assert pq.read_table(out / "00001.parquet").equals(mine)
    os.remove(out / "00001.parquet")
    remove(downloaded, out)
    pq.write_table(mine, out / "00000.parquet")  # the user's file replaces ours
    os.remove(downloaded / "00000.parquet")  # the input's table goes: ours would go too
    remove(downloaded, out)
    assert pq.read_table(out / "00000.parquet").equals(mine)


def test_a_killed_runs_tables_are_its_own_to_replace_or_delete(downloaded, tmp_path):
    """Pass 11: killed after a shard's tables were written but before its done marker, the rerun refused
    its own OUT/00000_stats.json once the input's stats changed, and left OUT/00000.parquet for good once
    the input's table was deleted. A digest of each table is recorded before it is written."""
    import subprocess

    import stalling

    out, state = tmp_path / "out", tmp_path / "stall"
    proc = subprocess.Popen(stalling.command(state, "done", 0, "imagesieve", "remove", "--quiet", "--workers", "1",
                                             "--duplicates", str(tmp_path / "ids"), str(downloaded), str(out)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        stalling.wait_for_stall(proc, state)  # 00000.tar and its tables written, no done marker
    finally:
        stalling.kill(proc)
    assert (out / "00000_stats.json").exists() and (out / "00000.parquet").exists()
    stats = json.loads((downloaded / "00000_stats.json").read_text())
    (downloaded / "00000_stats.json").write_text(json.dumps({**stats, "added_by_a_new_img2dataset": 1}))
    os.remove(downloaded / "00000.parquet")
    remove(downloaded, out)
    assert json.loads((out / "00000_stats.json").read_text())["added_by_a_new_img2dataset"] == 1
    assert not (out / "00000.parquet").exists()

"""`imagesieve dedup`: one run from shards to clean shards and a report, resumable at any point."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import stalling
import webdataset as wds

from imagesieve.workflows.sample_data import make_sample_dataset


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    make_sample_dataset(str(root), shard_size=10)  # ~39 shards: room to stop a run in the middle
    return root


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagesieve.cli", *args], capture_output=True, text=True,
                          **kwargs)


def outputs(out: Path) -> dict[str, bytes]:
    """Every output file a user reads (shards, lists), by path; run records and timings left out."""
    files = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.is_file() and (path.suffix == ".tar" or rel.startswith(("duplicates/", "groups/"))
                               or rel == "removed.parquet"):
            files[rel] = path.read_bytes() if path.suffix == ".tar" else pq.read_table(path).to_pylist()
    return files


def test_dedup_removes_the_planted_duplicates_and_writes_every_part(sample, tmp_path):
    out = tmp_path / "out"
    proc = run("dedup", "--json", "--quiet", "--workers", "2", str(sample / "shards"), str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # --json: one JSON object and nothing else on stdout
    planted = set(pq.read_table(sample / "planted").column("id").to_pylist())
    removed = set(pq.read_table(out / "removed.parquet").column("id").to_pylist())
    kept = {s["__key__"] for tar in sorted((out / "shards").glob("*.tar"))
            for s in wds.WebDataset(str(tar), shardshuffle=False)}
    assert planted <= removed and not kept & removed
    assert summary["samples_in"] == summary["kept"] + summary["removed"] == summary["images"]
    assert summary["removed"] == len(removed) == pq.read_table(out / "duplicates").num_rows
    assert set(summary["seconds"]) == {"find", "remove", "report"}
    assert (out / "report" / "index.html").exists()
    record = json.loads((out / "summary.json").read_text())
    assert record["removal"]["removed"] == summary["removed"] and record["removed_list"].endswith("removed.parquet")


def test_dry_run_writes_everything_but_the_shards(sample, tmp_path):
    out = tmp_path / "out"
    proc = run("dedup", "--dry-run", "--quiet", "--workers", "1", str(sample / "shards"), str(out))
    assert proc.returncode == 0, proc.stderr
    assert "nothing (dry run)" in proc.stdout
    assert not (out / "shards").exists() and not (out / "removed.parquet").exists()
    assert pq.read_table(out / "duplicates").num_rows > 0
    assert "Nothing has been removed yet" in (out / "report" / "index.html").read_text()


def test_dedup_killed_in_the_middle_then_rerun_ends_as_an_uninterrupted_run(sample, tmp_path):
    reference = tmp_path / "reference"
    assert run("dedup", "--quiet", "--workers", "1", str(sample / "shards"), str(reference)).returncode == 0
    out, state = tmp_path / "out", tmp_path / "stall"
    done = out / "shards" / "_imagesieve" / "done"
    proc = subprocess.Popen(stalling.command(state, "done", 5, "imagesieve", "dedup", "--quiet", "--workers", "1",
                                             str(sample / "shards"), str(out)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        stalling.wait_for_stall(proc, state)  # the hook: stopped for good after the 5th shard written
    finally:
        stalling.kill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in done.glob("*.json")) == sorted(Path(p).name for p in stalling.written(state))
    assert len(list(done.glob("*.json"))) == 5
    rerun = run("dedup", "--json", "--quiet", "--workers", "1", str(sample / "shards"), str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((out / "summary.json").read_text())["removal"]["shards_skipped"] == 5  # resumed, not redone
    assert outputs(out) == outputs(reference)
    again = run("dedup", "--quiet", "--workers", "1", str(sample / "shards"), str(out))  # nothing left to do
    assert again.returncode == 0 and outputs(out) == outputs(reference)


def test_dedup_into_a_folder_in_use_fails_at_once(sample, tmp_path):
    from imagesieve.storage.runfolder import run_lock

    out = tmp_path / "out"
    out.mkdir()
    with run_lock(str(out), "dedup"):
        proc = run("dedup", "--quiet", "--workers", "1", str(sample / "shards"), str(out))
    assert proc.returncode == 1 and "being written by another imagesieve run" in proc.stderr


def test_help_of_every_command_has_an_example():
    for command in ("find", "remove", "dedup", "report", "sample-data"):
        assert "example" in run(command, "--help").stdout
    assert run("--version").stdout.startswith("imagesieve ")


def test_a_rerun_with_other_settings_is_refused_before_anything_is_written(sample, tmp_path):
    out = tmp_path / "out"
    assert run("dedup", "--quiet", "--workers", "1", str(sample / "shards"), str(out)).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    proc = run("dedup", "--quiet", "--workers", "1", "--method", "exact", str(sample / "shards"), str(out))
    assert proc.returncode == 1 and "made with other settings (method)" in proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before


def _keys_in(folder: Path) -> dict[str, list[str]]:
    return {tar.name: [s["__key__"] for s in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False)]
            for tar in sorted(folder.glob("*.tar"))}


def test_a_rerun_after_the_input_changed_redoes_the_removal_and_drops_stale_outputs(make_shard, tmp_path):
    """Same settings, changed input: the new duplicate lists are applied to every shard, and a shard
    that left the input leaves the output; the lists, the removed list and the shards agree."""
    from imagesieve.workflows.dedup import dedup

    make_shard("a.tar", n=6, start=0)
    make_shard("b.tar", n=6, start=100)
    shards, out = tmp_path / "shards", tmp_path / "out"
    first = dedup(str(shards), str(out))
    assert first.removed == 0 and _keys_in(out / "shards") == {"a.tar": [f"{i:08d}" for i in range(6)],
                                                              "b.tar": [f"{i:08d}" for i in range(100, 106)]}

    make_shard("b.tar", keys=[f"{i:08d}" for i in range(100, 106)], start=0)  # now copies of a's images
    second = dedup(str(shards), str(out))
    removed = set(pq.read_table(out / "removed.parquet").column("id").to_pylist())
    assert second.removed == 6 and removed == {f"{i:08d}" for i in range(100, 106)}
    assert removed == set(pq.read_table(out / "duplicates").column("id").to_pylist())
    assert _keys_in(out / "shards") == {"a.tar": [f"{i:08d}" for i in range(6)], "b.tar": []}

    (shards / "b.tar").unlink()
    third = dedup(str(shards), str(out))
    assert third.samples_in == 6 and _keys_in(out / "shards") == {"a.tar": [f"{i:08d}" for i in range(6)]}
    assert not (out / "shards" / "_imagesieve" / "done" / "b.tar.json").exists()


def test_a_dry_run_after_the_lists_changed_leaves_no_stale_shards(make_shard, tmp_path):
    from imagesieve.workflows.dedup import dedup

    make_shard("a.tar", n=4, start=0)
    make_shard("b.tar", keys=[f"{i:08d}" for i in range(100, 104)], start=0)  # copies of a's images
    shards, out = tmp_path / "shards", tmp_path / "out"
    assert dedup(str(shards), str(out)).removed == 4
    make_shard("b.tar", keys=[f"{i:08d}" for i in range(100, 104)], start=50)  # distinct now
    summary = dedup(str(shards), str(out), dry_run=True)
    assert summary.duplicates == 0
    assert not list((out / "shards").glob("*.tar")) and not (out / "removed.parquet").exists()
    # pass 9: the emptied OUT/shards kept its summary and its mark of a finished run, so it was read as input
    assert not (out / "shards" / "summary.json").exists()
    with pytest.raises(ValueError, match="holds the output of an imagesieve run that did not finish"):
        dedup(str(out / "shards"), str(tmp_path / "next"))


def test_a_file_the_user_replaced_in_the_output_is_never_deleted(make_shard, tmp_path):
    from imagesieve.workflows.dedup import dedup

    make_shard("a.tar", n=4, start=0)
    make_shard("b.tar", n=4, start=100)
    shards, out = tmp_path / "shards", tmp_path / "out"
    dedup(str(shards), str(out))
    (out / "shards" / "b.tar").write_bytes(b"the user's own file, not ours")
    (shards / "b.tar").unlink()
    dedup(str(shards), str(out))
    assert (out / "shards" / "b.tar").read_bytes() == b"the user's own file, not ours"


def test_sample_data_writes_over_nothing_but_itself(tmp_path):
    """Fifth hostile pass: `sample-data DIR` replaced a user's DIR/shards/00000.tar and truth.parquet (and a dedup
    folder's clean shards). It now writes over nothing but its own bytes: a rerun is fine, anything else is
    refused before a file is written, naming it."""
    root = tmp_path / "data"
    make_sample_dataset(str(root), shard_size=100)
    written = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    make_sample_dataset(str(root), shard_size=100)  # the README's first command, run twice
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == written

    users = root / "shards" / "00000.tar"
    users.write_bytes(b"a user's shard")
    (root / "shards" / "mine.tar").write_bytes(b"another")
    with pytest.raises(ValueError, match=r"mine.tar, .*00000.tar\).*never replaces files it did not create"):
        make_sample_dataset(str(root), shard_size=100)
    assert users.read_bytes() == b"a user's shard"
    with pytest.raises(ValueError, match="other than this sample's"):  # another shard size: other shards
        make_sample_dataset(str(root), shard_size=50)

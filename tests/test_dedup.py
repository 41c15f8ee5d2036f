"""`imagesieve dedup`: one run from shards to clean shards and a report, resumable at any point."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from imagesieve.sample_data import make_sample_dataset


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    make_sample_dataset(str(root), shard_size=10)  # ~39 shards: a run long enough to stop in the middle
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
    out = tmp_path / "out"
    done = out / "shards" / "_imagesieve" / "done"
    proc = subprocess.Popen([sys.executable, "-m", "imagesieve.cli", "dedup", "--quiet", "--workers", "1",
                             str(sample / "shards"), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if done.exists() and len(list(done.glob("*.json"))) >= 5:  # a fixed point: 5 shards written
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    stopped_at = len(list(done.glob("*.json")))
    assert proc.returncode == -signal.SIGKILL and 5 <= stopped_at < 39
    rerun = run("dedup", "--json", "--quiet", "--workers", "1", str(sample / "shards"), str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert outputs(out) == outputs(reference)
    again = run("dedup", "--quiet", "--workers", "1", str(sample / "shards"), str(out))  # nothing left to do
    assert again.returncode == 0 and outputs(out) == outputs(reference)


def test_dedup_into_a_folder_in_use_fails_at_once(sample, tmp_path):
    from imagesieve.runfolder import run_lock

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

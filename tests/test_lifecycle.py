"""Processes of a run: none outlives the driver; SIGTERM ends a run cleanly; library scripts run as written.

The kill tests stop the run at a deterministic point, the stall hook (`stalling.py`): the run's workers
wait for good before the done marker that would follow the 4th, and the test acts once the hook says so.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import stalling
from conftest import write_ids
from stalling import alive, descendants

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

SCRIPT = """
import sys

from imagesieve import (FilePartitioningStage, ImageDuplicatesRemovalStage, ImageReaderStage, ImageWriterStage,
                        LocalExecutor, Pipeline)

if __name__ == "__main__":
    print("started", flush=True)
    try:
        Pipeline("removes", stages=[FilePartitioningStage(file_paths="shards"), ImageReaderStage(),
                                    ImageDuplicatesRemovalStage(removal_parquets_dir="dups"),
                                    ImageWriterStage(output_dir="out")]).run(LocalExecutor(2))
    except KeyboardInterrupt:
        print("interrupted; finished shards are kept", file=sys.stderr)
        sys.exit(130)
"""


@pytest.fixture
def stalling_run(make_shard, tmp_path):
    """Starts a pipeline script with 2 workers, its stdout piped to `cat`; returns (driver, cat, out)
    once the stall hook holds the run with exactly 4 of its 6 shards done."""
    for i in range(6):
        make_shard(f"{i:05d}.tar", n=4, start=4 * i)
    write_ids(tmp_path / "dups", ["00000002"])
    (tmp_path / "removes.py").write_text(SCRIPT)
    out, state = tmp_path / "out", tmp_path / "stall"
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    driver = subprocess.Popen(stalling.command(state, "done", 4, "removes.py"), stdout=cat.stdin,
                              stderr=subprocess.PIPE, cwd=tmp_path)
    cat.stdin.close()  # now only the driver and what it started hold the pipe's writing end
    try:
        stalling.wait_for_stall(driver, state)
        assert len(list((out / "_imagesieve" / "done").glob("*.json"))) == 4  # and no more will be
        yield driver, cat, out
    finally:
        for pid in [driver.pid, *descendants(driver.pid)]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigkill_of_the_driver_leaves_no_process_and_closes_the_pipe(stalling_run):
    driver, cat, _ = stalling_run
    started = descendants(driver.pid)
    assert len(started) >= 2  # the workers
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    stalling.wait_gone(started, 60)  # a bound on how long the kernel takes to end them: not a speed
    assert cat.wait(timeout=60) == 0  # the pipe reached EOF


def test_sigterm_ends_the_run_cleanly_keeping_finished_shards(stalling_run):
    driver, cat, out = stalling_run
    started = descendants(driver.pid)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=60) == 130
    assert "interrupted; finished shards are kept" in driver.stderr.read().decode()
    stalling.wait_gone(started, 60)
    assert cat.wait(timeout=60) == 0
    done = sorted(p.name.removesuffix(".json") for p in (out / "_imagesieve" / "done").glob("*.json"))
    assert done == sorted(Path(p).name.removesuffix(".json") for p in stalling.written(out.parent / "stall"))
    assert len(done) == 4
    for name in done:  # each finished shard kept whole
        with tarfile.open(out / name) as tar:
            assert len(tar.getnames()) == (9 if name == "00000.tar" else 12)
    for path in out.glob("*.tar"):  # and no other under a final name is partial (a worker may have been writing)
        with tarfile.open(path) as tar:
            assert len(tar.getnames()) in (9, 12)


def readme_library_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## As a library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("guarded", [True, False])
def test_readme_library_example_runs_as_a_script(make_shard, tmp_path, guarded):
    code = readme_library_example()
    assert 'if __name__ == "__main__":' in code
    if not guarded:  # as many first scripts are written: no guard, everything at top level
        code = code.replace('if __name__ == "__main__":\n    main()', "main()")
    for i in range(3):
        make_shard(f"{i:05d}.tar", n=4, start=4 * i)
    write_ids(tmp_path / "dups", ["00000001", "00000006"])
    Path(tmp_path, "example.py").write_text(code)
    run = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "clean").glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert "kept" in run.stdout


def test_cli_shows_a_worker_error_with_its_type_stage_and_shard(make_shard, tmp_path):
    for i in range(3):
        make_shard(f"{i:05d}.tar", n=3, start=3 * i)
    (tmp_path / "shards" / "00001.parquet").write_bytes(b"not parquet")  # the shard's img2dataset table
    write_ids(tmp_path / "dups", ["00000002"])
    run = subprocess.run([sys.executable, "-m", "imagesieve.cli", "remove", "--quiet", "--workers", "2",
                          "--duplicates", str(tmp_path / "dups"), str(tmp_path / "shards"), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("imagesieve: error: ValueError: ") and "is not readable Parquet" in line
    assert line.endswith(f"(stage 'image_writer', shard '{tmp_path / 'shards' / '00001.tar'}')")

"""Processes of a run: none outlives the driver; SIGTERM ends a run cleanly; library scripts run as written.

The kill tests stop the run at a deterministic point: a stage stalls for good on shard 00001,
the other worker finishes at least 4 other shards, and the test acts once their done markers exist.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_ids

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


STALLING_SCRIPT = """
import sys, time
from dataclasses import dataclass
from pathlib import Path

from imagesieve import (FilePartitioningStage, ImageBatch, ImageDuplicatesRemovalStage, ImageReaderStage,
                        ImageWriterStage, LocalExecutor, Pipeline, ProcessingStage)


@dataclass
class StallStage(ProcessingStage[ImageBatch, ImageBatch]):
    name: str = "stall"

    def process(self, task):
        if task._metadata["relative_path"] == "00001.tar":
            Path("stalled").write_text("yes")
            time.sleep(3600)
        return task


if __name__ == "__main__":
    print("started", flush=True)
    try:
        Pipeline("stalls", stages=[FilePartitioningStage(file_paths="shards"), ImageReaderStage(), StallStage(),
                                   ImageDuplicatesRemovalStage(removal_parquets_dir="dups"),
                                   ImageWriterStage(output_dir="out")]).run(LocalExecutor(2))
    except KeyboardInterrupt:
        print("interrupted; finished shards are kept", file=sys.stderr)
        sys.exit(130)
"""


@pytest.fixture
def stalling_run(make_shard, tmp_path):
    """Starts a pipeline script with 2 workers, its stdout piped to `cat`; returns (driver, cat, out)
    once the worker holding shard 00001 is stalled (the hook) and the other worker did at least 4 shards."""
    for i in range(6):
        make_shard(f"{i:05d}.tar", n=4, start=4 * i)
    write_ids(tmp_path / "dups", ["00000002"])
    (tmp_path / "stalling.py").write_text(STALLING_SCRIPT)
    out = tmp_path / "out"
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    driver = subprocess.Popen([sys.executable, "stalling.py"], stdout=cat.stdin, stderr=subprocess.PIPE, cwd=tmp_path)
    cat.stdin.close()  # now only the driver and what it started hold the pipe's writing end
    done = out / "_imagesieve" / "done"
    deadline = time.monotonic() + 60
    while not ((tmp_path / "stalled").exists() and len(list(done.glob("*.json"))) >= 4) \
            and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # the run cannot end now; a shard queued behind the stalled one on its worker may be left undone
    assert driver.poll() is None and len(list(done.glob("*.json"))) >= 4
    yield driver, cat, out
    for pid in [driver.pid, *descendants(driver.pid)]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def assert_all_gone(pids: list[int], cat: subprocess.Popen, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "processes of the run outlived it"
    assert cat.wait(timeout=max(0.1, deadline - time.monotonic())) == 0  # the pipe reached EOF


def test_sigkill_of_the_driver_leaves_no_process_and_closes_the_pipe(stalling_run):
    driver, cat, _ = stalling_run
    started = descendants(driver.pid)
    assert len(started) >= 2  # the workers
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=10)
    assert_all_gone(started, cat)


def test_sigterm_ends_the_run_cleanly_keeping_finished_shards(stalling_run):
    driver, cat, out = stalling_run
    started = descendants(driver.pid)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=30) == 130
    assert "interrupted; finished shards are kept" in driver.stderr.read().decode()
    assert_all_gone(started, cat)
    done = sorted(p.name for p in (out / "_imagesieve" / "done").glob("*.json"))
    assert len(done) >= 4 and not [name for name in done if name.startswith("00001.")]
    assert all((out / name.removesuffix(".json")).exists() for name in done)


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

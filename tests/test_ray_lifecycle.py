"""Processes of an `--executor ray` run: a local Ray instance the run started ends with its driver, even a
SIGKILLed one (Ray's agents alone outlive it by over a minute); a cluster the run joined is left alone.

The kill tests stop the driver at a deterministic point: a hook stalls it for good as soon as a Ray worker
finished a task, so Ray's head, agents and workers are all up, and the test acts once its marker exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import write_ids
from stalling import STALL_TIMEOUT, alive, descendants, wait_gone

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")]

# the command line, run as `imagesieve` runs it, with a hook that stalls the driver after a worker's first task
STALLING_DRIVER = """
import sys, time
from pathlib import Path

from imagesieve.cli import main
from imagesieve.executors import ray as ray_executor

complete = ray_executor._ActorPool.complete


def stall(self, ref):
    result = complete(self, ref)
    Path("stalled").write_text("yes")
    time.sleep(3600)
    return result


ray_executor._ActorPool.complete = stall
sys.exit(main(sys.argv[1:]))
"""



def remove(folder: Path) -> list[str]:
    """Absolute paths: the workers of a cluster the run joins do not share its working folder."""
    return ["remove", "--quiet", "--executor", "ray", "--workers", "2", "--duplicates", str(folder / "dups"),
            str(folder / "shards"), str(folder / "out")]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def left_alive(names: dict[int, str]) -> list[str]:
    """The command lines of the run's processes (pid: command line) still alive once its reaper is gone: once
    the driver is, the reaper kills what is left of the Ray instance the run started, then exits when none is
    (a generous bound on how long that takes; no time limit in the claim)."""
    reapers = [pid for pid, name in names.items() if "lifeline" in name]
    assert reapers, "the run started no reaper"
    wait_gone(reapers, STALL_TIMEOUT)
    return [name or str(pid) for pid, name in names.items() if alive(pid)]


@pytest.fixture(autouse=True)
def own_ray_temp_dir(monkeypatch):
    """A Ray temp folder of the test's own, so that a run never joins a cluster another process started on
    this machine (`ray.init()` joins the latest `ray start` one), nor another run ours. Short: Ray's socket
    paths in it must fit in 107 bytes."""
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def data(make_shard, tmp_path) -> Path:
    for i in range(4):
        make_shard(f"{i:05d}.tar", n=4, start=4 * i)
    write_ids(tmp_path / "dups", ["00000002"])
    (tmp_path / "stalling.py").write_text(STALLING_DRIVER)
    return tmp_path


@pytest.fixture
def started():
    """PIDs the test saw; whatever of them is still alive at the end is killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def stalled_driver(folder: Path, env: dict | None = None) -> subprocess.Popen:
    driver = subprocess.Popen([sys.executable, "stalling.py", *remove(folder)], cwd=folder, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + STALL_TIMEOUT
    while not (folder / "stalled").exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (folder / "stalled").exists(), driver.stderr.read().decode() if driver.poll() is not None else \
        f"the driver did not reach the stall point in {STALL_TIMEOUT} s"
    return driver


def test_sigkill_of_the_driver_ends_the_local_ray_instance_it_started(data, started):
    driver = stalled_driver(data)
    started.extend(descendants(driver.pid))
    names = {pid: cmdline(pid) for pid in started}
    assert any("raylet" in n for n in names.values()) and any("gcs_server" in n for n in names.values())
    assert any("Agent" in n for n in names.values()) and any("_GroupWorker" in n for n in names.values())
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    assert left_alive(names) == []


def test_a_run_that_ends_leaves_no_ray_process(data, started):
    driver = subprocess.Popen([sys.executable, "-m", "imagesieve.cli", *remove(data)], cwd=data,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    names: dict[int, str] = {}
    deadline = time.monotonic() + STALL_TIMEOUT
    while driver.poll() is None and time.monotonic() < deadline:  # every process the run starts, as it starts
        names.update((p, cmdline(p) or names.get(p, "")) for p in descendants(driver.pid))
        time.sleep(0.1)
    started.extend(names)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 0, err.decode()
    assert any("raylet" in n for n in names.values()) and any("Agent" in n for n in names.values())
    assert sorted(p.name for p in (data / "out").glob("*.tar")) == [f"{i:05d}.tar" for i in range(4)]
    assert left_alive(names) == []


def test_a_run_that_joins_a_cluster_leaves_it_alone_when_killed(data, started):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        head = [info.process.pid for infos in cluster.head_node.all_processes.values() for info in infos]
        raylet = cluster.head_node.all_processes["raylet"][0].process.pid
        driver = stalled_driver(data, env={**os.environ, "RAY_ADDRESS": cluster.address})
        assert descendants(driver.pid) == []  # it started neither a Ray instance nor a reaper
        agents = [p for p in descendants(raylet) if "Agent" in cmdline(p)]
        assert agents
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
        # the cluster still serves runs: the killed one, rerun on it, ends with every shard written
        rerun = subprocess.run([sys.executable, "-m", "imagesieve.cli", *remove(data)], cwd=data, capture_output=True,
                               text=True, timeout=STALL_TIMEOUT, env={**os.environ, "RAY_ADDRESS": cluster.address})
        assert rerun.returncode == 0, rerun.stderr
        assert sorted(p.name for p in (data / "out").glob("*.tar")) == [f"{i:05d}.tar" for i in range(4)]
        assert [p for p in [*head, *agents] if not alive(p)] == []
    finally:
        cluster.shutdown()

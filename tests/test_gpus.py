"""GPUs on LocalExecutor (declared devices, one CUDA_VISIBLE_DEVICES per worker, spawned GPU workers) and
as Ray's num_gpus. The machine needs no GPU: the devices are declared, and each worker reports the
CUDA_VISIBLE_DEVICES it was given, when its stages were unpickled, set up and run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_ids

from imagesieve import (
    FilePartitioningStage,
    ImageDuplicatesRemovalStage,
    ImageReaderStage,
    ImageWriterStage,
    LocalExecutor,
    Pipeline,
    ProcessingStage,
    Resources,
    WorkerDied,
)
from imagesieve.executors.devices import assign_devices, declared_devices
from imagesieve.executors.plan import StageGroup, fuse
from imagesieve.executors.ray import RayOptions, actor_options
from imagesieve.tasks import FileGroupTask, Task

STARTED_BY = "import"  # the driver sets "driver": a forked worker inherits that, a spawned one imports this module


def log_line(log_dir: str, text: str) -> None:
    with open(os.path.join(log_dir, "log"), "a") as f:
        f.write(text + "\n")


def logged(log_dir: str) -> list[list[str]]:
    path = Path(log_dir, "log")
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@dataclass
class RecordDevice(ProcessingStage[Task, Task]):
    """Passes tasks through; records in each task (and in `log_dir`) its worker's pid, the
    CUDA_VISIBLE_DEVICES it saw when unpickled, set up and run, and how the worker started."""

    name: str = "record_device"
    resources: Resources = Resources(gpus=0.5)
    log_dir: str = ""
    die_on: str = ""  # a task whose first run kills the worker (a marker file in log_dir says it happened)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__["_at_unpickle"] = os.environ.get("CUDA_VISIBLE_DEVICES", "-")

    def setup(self, worker_metadata=None) -> None:
        self.__dict__["_at_setup"] = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
        if self.log_dir:
            log_line(self.log_dir, f"setup {self.name} {os.getpid()} {self._at_setup} "
                                   f"{self.__dict__.get('_at_unpickle', '-')} {STARTED_BY}")

    def process(self, task: Task) -> Task:
        device = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
        if self.die_on and task.task_id == self.die_on and not Path(self.log_dir, "died").exists():
            Path(self.log_dir, "died").write_text(device)
            os.kill(os.getpid(), signal.SIGKILL)
        record = (self.name, os.getpid(), device, self.__dict__.get("_at_unpickle", "-"),
                  self.__dict__.get("_at_setup", "-"), STARTED_BY)
        task._metadata["seen"] = [*task._metadata.get("seen", []), record]
        if self.log_dir:
            log_line(self.log_dir, f"process {' '.join(map(str, record))}")
        return task


def file_tasks(n: int) -> list[FileGroupTask]:
    return [FileGroupTask("gpus", [f"file{i}"], task_id=f"t{i}") for i in range(n)]


def workers_seen(results: list[Task], stage: str) -> dict[int, set[str]]:
    """pid -> every CUDA_VISIBLE_DEVICES value a worker of `stage` saw (unpickled, set up, running)."""
    seen: dict[int, set[str]] = {}
    for task in results:
        for name, pid, device, at_unpickle, at_setup, _ in task._metadata["seen"]:
            if name == stage:
                seen.setdefault(pid, set()).update({device, at_unpickle, at_setup})
    return seen


@pytest.fixture
def as_driver(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "STARTED_BY", "driver")


@pytest.fixture
def no_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_half_gpu_workers_share_two_declared_devices_two_each(as_driver, no_devices):
    results = LocalExecutor(4, gpus=2).execute([RecordDevice()], file_tasks(8))
    assert sorted(t.task_id for t in results) == sorted(f"t{i}" for i in range(8))
    seen = workers_seen(results, "record_device")
    assert len(seen) == 4 and os.getpid() not in seen  # 4 workers, none of them the driver
    assert all(len(devices) == 1 for devices in seen.values())  # one device each, set before unpickling
    per_device = Counter(next(iter(devices)) for devices in seen.values())
    assert per_device == {"0": 2, "1": 2}
    assert {t._metadata["seen"][0][5] for t in results} == {"import"}  # spawned, not forked from this driver


def test_whole_gpu_workers_get_distinct_devices_from_cuda_visible_devices(as_driver, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # read when the run starts
    results = LocalExecutor(4).execute([RecordDevice(resources=Resources(gpus=1))], file_tasks(6))
    seen = workers_seen(results, "record_device")
    assert sorted(d for devices in seen.values() for d in devices) == ["3", "5"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"  # the driver's own is left as it was


def test_a_gpu_stage_without_devices_is_refused_before_anything_runs(make_shard, tmp_path, no_devices,
                                                                      monkeypatch):
    make_shard("00000.tar", n=4)
    write_ids(tmp_path / "dups", ["00000001"])
    logs = tmp_path / "logs"
    logs.mkdir()
    cpu_before = RecordDevice(name="cpu_before", resources=Resources(), log_dir=str(logs))

    def pipeline() -> Pipeline:
        return Pipeline("refused", stages=[
            FilePartitioningStage(file_paths=str(tmp_path / "shards")), ImageReaderStage(), cpu_before,
            RecordDevice(name="embed_on_gpu", resources=Resources(gpus=1), log_dir=str(logs)),
            ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path / "dups")),
            ImageWriterStage(output_dir=str(tmp_path / "out"))])

    for declared in (None, "", "-1"):
        if declared is not None:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", declared)
        with pytest.raises(RuntimeError, match=r"stage 'embed_on_gpu' needs a GPU \(gpus=1\) but this LocalExecutor "
                                               r"has no devices: declare devices with CUDA_VISIBLE_DEVICES"):
            pipeline().run(LocalExecutor(2))
    with pytest.raises(RuntimeError, match="stage 'embed_on_gpu' needs a GPU"):
        pipeline().run(LocalExecutor(2, gpus=0))
    with pytest.raises(RuntimeError, match=r"stage 'embed_on_gpu' needs 2 GPUs per worker \(gpus=2\) but this "
                                           r"LocalExecutor has 1 device\(s\) \(0\)"):
        Pipeline("too big", stages=[RecordDevice(name="embed_on_gpu", resources=Resources(gpus=2))]).run(
            LocalExecutor(2, gpus=1), file_tasks(1))
    assert not (tmp_path / "out").exists() and not logged(str(logs))  # nothing was set up, nothing written


def test_cpu_stages_beside_a_gpu_group_keep_fork_and_the_output_is_unchanged(make_shard, tmp_path, as_driver,
                                                                            no_devices):
    for i in range(4):
        make_shard(f"{i:05d}.tar", n=4, start=4 * i)
    write_ids(tmp_path / "dups", ["00000001", "00000006"])
    logs = tmp_path / "logs"
    logs.mkdir()

    def run(out: str, *middle: ProcessingStage, executor: LocalExecutor) -> None:
        Pipeline("beside", stages=[FilePartitioningStage(file_paths=str(tmp_path / "shards")), ImageReaderStage(),
                                   *middle, ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path / "dups")),
                                   ImageWriterStage(output_dir=out)]).run(executor)

    run(str(tmp_path / "cpu_only"), executor=LocalExecutor(2))
    gpu = Resources(gpus=0.5)
    run(str(tmp_path / "with_gpu"), RecordDevice(name="cpu_before", resources=Resources(cpus=0.5), log_dir=str(logs)),
        RecordDevice(name="gpu_a", resources=gpu, log_dir=str(logs)),
        RecordDevice(name="gpu_b", resources=gpu, log_dir=str(logs)),  # fused with gpu_a: same worker, same device
        executor=LocalExecutor(2, gpus=["7"]))
    tars = sorted(p.name for p in (tmp_path / "cpu_only").glob("*.tar"))
    assert tars == sorted(p.name for p in (tmp_path / "with_gpu").glob("*.tar")) and len(tars) == 4
    for name in tars:
        assert (tmp_path / "cpu_only" / name).read_bytes() == (tmp_path / "with_gpu" / name).read_bytes()
    setups = Counter((stage, device, started) for _, stage, _, device, _, started in
                     (line for line in logged(str(logs)) if line[0] == "setup"))
    assert setups == {("cpu_before", "-", "driver"): 2, ("gpu_a", "7", "import"): 2, ("gpu_b", "7", "import"): 2}
    runs = [line[1:] for line in logged(str(logs)) if line[0] == "process"]
    by_stage = {stage: {(pid, device, started) for stage_, pid, device, _, _, started in runs if stage_ == stage}
                for stage in ("cpu_before", "gpu_a", "gpu_b")}
    assert by_stage["gpu_a"] == by_stage["gpu_b"]  # fused: each task met both in one worker
    assert {(device, started) for _, device, started in by_stage["gpu_a"]} == {("7", "import")}
    assert {started for _, _, started in by_stage["cpu_before"]} == {"driver"}  # forked: today's start method
    assert {device for _, device, _ in by_stage["cpu_before"]} == {"-"}


def test_a_gpu_worker_that_dies_is_replaced_on_its_own_device(tmp_path, as_driver, no_devices):
    stage = RecordDevice(resources=Resources(gpus=1), log_dir=str(tmp_path), die_on="t0")
    results = LocalExecutor(2, gpus=["0", "1"]).execute([stage], file_tasks(6))
    assert sorted(t.task_id for t in results) == [f"t{i}" for i in range(6)]
    died_on = (tmp_path / "died").read_text()
    setups = Counter(line[3] for line in logged(str(tmp_path)) if line[0] == "setup")
    assert setups == {died_on: 2, ({"0", "1"} - {died_on}).pop(): 1}


def test_declared_devices():
    assert declared_devices(None, {}) == [] and declared_devices(None, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert declared_devices(None, {"CUDA_VISIBLE_DEVICES": " 2, 3 "}) == ["2", "3"]
    assert declared_devices(None, {"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert declared_devices(None, {"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]  # CUDA stops at a hidden one
    assert declared_devices(None, {"CUDA_VISIBLE_DEVICES": "GPU-8f2a,GPU-91c0"}) == ["GPU-8f2a", "GPU-91c0"]
    assert declared_devices(3) == ["0", "1", "2"] and declared_devices(0) == []
    assert declared_devices([2, "3"]) == ["2", "3"]
    with pytest.raises(ValueError, match="twice"):
        declared_devices(None, {"CUDA_VISIBLE_DEVICES": "0,0"})
    with pytest.raises(ValueError, match="without commas"):
        LocalExecutor(gpus=["0,1"])
    with pytest.raises(TypeError):
        LocalExecutor(gpus="0,1")


def groups_of(*resources: Resources) -> list[StageGroup]:
    """One group of one stage for each of `resources` (equal resources would fuse)."""
    return [StageGroup(i, [RecordDevice(name=f"s{i}", resources=r)]) for i, r in enumerate(resources)]


def test_assign_devices_packs_shares_and_joins_whole_devices():
    many = [8, 8, 8]
    # halves: two a device, spread first; a CPU group gets none
    assert assign_devices(groups_of(Resources(gpus=0.5), Resources()), many, ["0", "1"], 24) == [
        ["0", "1", "0", "1"], None]
    assert assign_devices(groups_of(Resources(gpus=0.5)), [1], ["0", "1"], 24) == [["0"]]
    assert assign_devices(groups_of(Resources(gpus=2)), many, ["0", "1", "2", "3", "4"], 24) == [["0,1", "2,3"]]
    # gpu_memory_gb is a share of one device's memory (Curator: gpu_memory_gb / the device's memory)
    assert assign_devices(groups_of(Resources(gpu_memory_gb=8)), many, ["0"], 24) == [["0", "0", "0"]]
    assert assign_devices(groups_of(Resources(gpu_memory_gb=8)), many, ["0"], 16) == [["0", "0"]]
    # groups share the devices: the whole-GPU group is placed first, the halves fill what is left
    assert assign_devices(groups_of(Resources(gpus=0.5), Resources(gpus=1)), many, ["0", "1"], 24) == [
        ["1", "1"], ["0"]]
    with pytest.raises(RuntimeError, match="stage 's1' needs 1 GPU per worker .gpus=1. besides one worker of each "
                                           "other GPU stage"):
        assign_devices(groups_of(Resources(gpus=1), Resources(gpus=1)), many, ["0"], 24)
    with pytest.raises(ValueError, match="stage 's0' asks for gpus=1.5: above 1, give a whole number"):
        assign_devices(groups_of(Resources(gpus=1.5)), many, ["0", "1"], 24)
    with pytest.raises(ValueError, match="stage 's0' asks for gpu_memory_gb=40, more than one device has"):
        assign_devices(groups_of(Resources(gpu_memory_gb=40)), many, ["0"], 24)


def test_ray_actor_options_carry_the_stage_gpus():
    options = RayOptions(max_restarts=1, max_task_retries=2)
    half, = groups_of(Resources(cpus=2, gpus=0.5))
    assert actor_options(half, options) == {"num_cpus": 2, "num_gpus": 0.5, "max_restarts": 1, "max_task_retries": 2}
    share, = groups_of(Resources(gpu_memory_gb=6))
    assert actor_options(share, options)["num_gpus"] == 0.25
    assert actor_options(share, RayOptions(device_memory_gb=12))["num_gpus"] == 0.5
    cpu, = fuse([RecordDevice(resources=Resources()).with_(runtime_env={"env_vars": {"A": "1"}})])
    assert actor_options(cpu, options)["num_gpus"] == 0 and actor_options(cpu, options)["runtime_env"] == {
        "env_vars": {"A": "1"}}


GPU_SCRIPT = """
import os, sys, time
from dataclasses import dataclass
from pathlib import Path

from imagesieve import LocalExecutor, ProcessingStage, Resources
from imagesieve.tasks import FileGroupTask


@dataclass
class OnGpu(ProcessingStage[FileGroupTask, FileGroupTask]):
    name: str = "on_gpu"
    resources: Resources = Resources(gpus=0.5)

    def process(self, task):
        Path(f"seen.{os.getpid()}").write_text(os.environ["CUDA_VISIBLE_DEVICES"])
        if task.task_id == "t3":
            time.sleep(3600)
        return task


def main():
    print("started", flush=True)
    LocalExecutor(2).execute([OnGpu()], [FileGroupTask("s", [str(i)], task_id=f"t{i}") for i in range(6)])
    print("done")


if __name__ == "__main__":
    main()
"""


def run_script(tmp_path: Path, code: str, **popen) -> subprocess.Popen:
    (tmp_path / "gpu_run.py").write_text(code)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}
    return subprocess.Popen([sys.executable, "gpu_run.py"], cwd=tmp_path, env=env, **popen)


def test_a_script_with_a_gpu_stage_and_its_workers_end_with_the_driver(tmp_path):
    """Spawned GPU workers load the stage from the script itself, get their own device, and die with a
    killed driver (and so does multiprocessing's resource tracker that spawn starts)."""
    from stalling import STALL_TIMEOUT, alive, descendants, wait_gone

    driver = run_script(tmp_path, GPU_SCRIPT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + STALL_TIMEOUT  # the hook: t3 stalls for good; wait till both workers ran a task
    while len(list(tmp_path.glob("seen.*"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    started = descendants(driver.pid)
    try:
        assert driver.poll() is None, driver.stderr.read().decode()
        assert sorted(p.read_text() for p in tmp_path.glob("seen.*")) == ["0", "1"]  # halves, spread first
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
        assert len(started) >= 2
        wait_gone(started, 60)  # GPU workers (and the resource tracker) end with the driver
    finally:
        for pid in [driver.pid, *started]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_unguarded_script_with_a_gpu_stage_is_told_what_to_add(tmp_path):
    code = GPU_SCRIPT.replace('        if task.task_id == "t3":\n            time.sleep(3600)\n', "").replace(
        'if __name__ == "__main__":\n    main()', "main()")
    run = run_script(tmp_path, code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 1 and "done" not in stdout and not list(tmp_path.glob("seen.*"))
    assert (f"{WorkerDied.__name__}: a GPU worker of stage 'on_gpu' could not start (exit code 1; its error is "
            "above): GPU workers start fresh (spawn), so the script that starts a run needs") in stderr
    assert "a pipeline was started while a GPU worker (started fresh, with spawn) imported the main script" in stderr


RAY_SCRIPT = """
import json, sys
import ray
import test_gpus
from imagesieve import Resources
from imagesieve.executors.ray import RayExecutor

ray.cloudpickle.register_pickle_by_value(test_gpus)
ray.init(address="local", num_cpus=2, num_gpus=2, log_to_driver=False, include_dashboard=False)
try:
    stage = test_gpus.RecordDevice(resources=Resources(cpus=0.5, gpus=0.5))
    results = RayExecutor().execute([stage], test_gpus.file_tasks(8))
finally:
    ray.shutdown()
seen = test_gpus.workers_seen(results, "record_device")
print(json.dumps({"tasks": sorted(t.task_id for t in results), "seen": {str(k): sorted(v) for k, v in seen.items()}}))
"""


@pytest.mark.ray
def test_ray_gives_each_half_gpu_actor_its_own_device(tmp_path):
    """On a local Ray instance declaring 2 (fake) GPUs, Resources(gpus=0.5) becomes each actor's num_gpus
    and Ray sets every actor's CUDA_VISIBLE_DEVICES: two actors a device. In a process of its own: a Ray
    instance started in the test process leaves state that breaks the next test's local cluster."""
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    run = subprocess.run([sys.executable, "-c", RAY_SCRIPT], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["tasks"] == sorted(f"t{i}" for i in range(8))
    seen = out["seen"]
    assert len(seen) == 4 and all(len(devices) == 1 for devices in seen.values())  # set before unpickling too
    assert Counter(devices[0] for devices in seen.values()) == {"0": 2, "1": 2}

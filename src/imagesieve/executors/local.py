"""LocalExecutor: a pool of processes per fused stage group, on one machine.

Each group of stages (see `plan.fuse`) gets its own workers, sized by its resources and worker
caps; `setup` runs once in each worker, `teardown` in each worker at the end, also when the run
fails. At most two batches are in flight per worker and queues between groups are bounded, so
memory stays bounded. A group with one worker runs in this process, which is the easy way to
debug a stage. Workers are forked from the driver and die with it (`lifeline`), and a worker
that dies mid-task is replaced and its task retried, `max_retries` times.

GPUs are declared (`gpus=`, else `CUDA_VISIBLE_DEVICES` when the run starts), never probed. A group
whose stages need GPUs gets as many workers as its share fits on the devices (`devices.assign_devices`),
each started fresh (spawn, never forked nor run in the driver) with a `CUDA_VISIBLE_DEVICES` of its
own; a GPU stage that cannot have one worker is refused, naming it, before anything runs.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from imagesieve.executors.base import BaseExecutor, ProgressCallback, split_planning
from imagesieve.executors.devices import assign_devices, declared_devices
from imagesieve.executors.errors import terminate_cleanly, with_context
from imagesieve.executors.plan import DEVICE_MEMORY_GB, StageGroup, fuse, with_cluster_resources
from imagesieve.executors.processes import InlinePool, ProcessPool, wait_all
from imagesieve.executors.scheduler import Scheduler
from imagesieve.stages.base import NodeInfo, ProcessingStage, WorkerMetadata
from imagesieve.tasks import Task
from imagesieve.util.lifeline import die_with


def mp_context():
    """Fork on Linux: workers start at once, inherit the stages (no pickling, no re-import of the
    caller's script, so a script without a `__main__` guard works) and can die with the driver."""
    return multiprocessing.get_context("fork" if os.name == "posix" and hasattr(os, "fork") else "spawn")


class LocalExecutor(BaseExecutor):
    """Runs a pipeline on this machine with up to `num_workers` processes per stage group
    (default: all cores). `gpus`: the GPUs stages may use, a number (devices 0..n-1) or a list of
    device IDs; None (default) takes those `CUDA_VISIBLE_DEVICES` lists when a run starts (unset or
    empty: none). `device_memory_gb`: one device's memory, which a `gpu_memory_gb` stage takes a share of."""

    def __init__(self, num_workers: int | None = None, on_task_done: ProgressCallback | None = None,
                 max_retries: int = 2, gpus: int | Sequence[str | int] | None = None,
                 device_memory_gb: float = DEVICE_MEMORY_GB) -> None:
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not device_memory_gb > 0:
            raise ValueError(f"device_memory_gb must be > 0, got {device_memory_gb}")
        if gpus is not None:
            declared_devices(gpus)  # a wrong value is refused here, not when a run starts
        self.num_workers = num_workers
        self.on_task_done = on_task_done
        self.max_retries = max_retries
        self.gpus = gpus
        self.device_memory_gb = device_memory_gb

    def parallelism(self) -> int:
        return self.num_workers or os.cpu_count() or 1

    def map(self, fn, jobs: list[tuple]) -> list:
        workers = min(self.parallelism(), len(jobs))
        if workers <= 1:
            return super().map(fn, jobs)
        with terminate_cleanly(), ProcessPoolExecutor(workers, mp_context=mp_context(), initializer=die_with,
                                                       initargs=(os.getpid(),)) as pool:
            return list(pool.map(fn, *zip(*jobs, strict=True)))

    def group_workers(self, group: StageGroup, n_tasks: int | None = None) -> int:
        """Workers of one group: the cores its resources fit in, capped by its worker caps and,
        for the first group, by the number of tasks."""
        total, _ = group.caps
        cpus = float(self.parallelism())
        if group.resources.cpus > cpus:
            raise RuntimeError(f"stage {group.name!r} needs {group.resources.cpus} CPUs per worker but this "
                               f"executor has {self.parallelism()}; lower its resources or raise num_workers")
        fit = group.workers_on_node(cpus, None, self.parallelism(), self.device_memory_gb)  # GPUs: assign_devices
        return max(1, min([fit, *(c for c in (total, n_tasks) if c)]))

    def execute(self, stages: list[ProcessingStage], initial_tasks: list[Task]) -> list[Task]:
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            raise RuntimeError("a pipeline was started while a GPU worker (started fresh, with spawn) imported "
                               "the main script: start runs under `if __name__ == \"__main__\":`")
        devices = declared_devices(self.gpus)  # CUDA_VISIBLE_DEVICES is read here, once a run
        stages = with_cluster_resources(stages, bool(devices))
        every = fuse(stages)
        assign_devices(every, [1] * len(every), devices, self.device_memory_gb)  # refuses before anything runs
        tasks, stages = split_planning(stages, initial_tasks)
        if not stages or not tasks:
            return tasks
        for stage in stages:
            stage.setup_on_node(NodeInfo(), WorkerMetadata())
        groups = fuse(stages)
        wanted = [self.group_workers(group, len(tasks) if group.index == 0 else None) for group in groups]
        placed = assign_devices(groups, wanted, devices, self.device_memory_gb)
        pools: list[InlinePool | ProcessPool] = []
        failed = True
        try:
            with terminate_cleanly():
                for group, workers, group_devices in zip(groups, wanted, placed, strict=True):
                    if group_devices is not None:  # GPU workers: never in the driver, never forked
                        pools.append(ProcessPool(group, len(group_devices), None, self.max_retries, group_devices))
                    else:
                        pools.append(InlinePool(group) if workers == 1 or self.parallelism() == 1 else
                                     ProcessPool(group, workers, mp_context(), self.max_retries))
                scheduler = Scheduler(groups, pools, lambda: wait_all(pools), self.on_task_done)
                results = scheduler.run(tasks)
                failed = False
        except BaseException as exc:
            raise with_context(exc)  # noqa: B904 - the same exception, its context in its message
        finally:
            errors = [pool.shutdown(graceful=not failed) for pool in pools]
        teardown_error = next((e for e in errors if e is not None), None)
        if teardown_error is not None:
            raise with_context(teardown_error)
        return results

"""The executor interface and the code every executor shares: running a chain of stages on a task."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from imagesieve.stages.base import ProcessingStage, as_task_list
from imagesieve.tasks import EmptyTask, Task

ProgressCallback = Callable[[Task, list[Task]], None]


class BaseExecutor(ABC):
    """Runs a validated list of stages on a list of initial tasks and returns the last stage's tasks."""

    @abstractmethod
    def execute(self, stages: list[ProcessingStage], initial_tasks: list[Task]) -> list[Task]: ...

    def parallelism(self) -> int:
        """How many jobs `map` runs at once."""
        return 1

    def map(self, fn: Callable, jobs: list[tuple]) -> list:
        """fn(*job) for every job, in job order; executors run them in parallel where they can.
        For work that is not a pipeline of tasks, such as the blocks of the near-duplicate search."""
        return [fn(*job) for job in jobs]


def split_planning(stages: list[ProcessingStage], tasks: list[Task]) -> tuple[list[Task], list[ProcessingStage]]:
    """Run the leading source stages (those fed an `EmptyTask`, such as file listing) in the driver.

    Returns the tasks they made and the stages left to distribute.
    """
    rest = list(stages)
    while rest and tasks and all(isinstance(t, EmptyTask) for t in tasks):
        stage = rest.pop(0)
        stage.setup()
        tasks = run_stage(stage, tasks)
        stage.teardown()
    return tasks, rest


def run_stage(stage: ProcessingStage, tasks: list[Task]) -> list[Task]:
    """Feed `tasks` through one stage in groups of `batch_size`, timing it into each output's perf list."""
    out: list[Task] = []
    size = max(1, stage.batch_size)
    for start in range(0, len(tasks), size):
        group = tasks[start:start + size]
        began = time.perf_counter()
        results = stage.process_batch(group) if size > 1 else as_task_list(stage.process(group[0]))
        elapsed = time.perf_counter() - began
        for result in results:
            result._stage_perf = [*result._stage_perf, {"stage": stage.name, "seconds": elapsed,
                                                         "items": sum(t.num_items for t in group)}]
        out.extend(results)
    return out


def run_chain(stages: list[ProcessingStage], task: Task) -> list[Task]:
    """Run one task through every stage in turn (stages already set up)."""
    tasks = [task]
    for stage in stages:
        tasks = run_stage(stage, tasks)
        if not tasks:
            break
    return tasks

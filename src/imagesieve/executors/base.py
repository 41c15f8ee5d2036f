"""The executor interface, and running the leading source stages in the driver."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from imagesieve.executors.runner import GroupRunner
from imagesieve.stages.base import NodeInfo, ProcessingStage, WorkerMetadata
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
        stage.setup_on_node(NodeInfo(), WorkerMetadata(worker_id="driver"))
        runner = GroupRunner([stage], WorkerMetadata(worker_id="driver"))
        runner.setup()
        try:
            tasks = [out for task in tasks for out in runner.run([task])[0]]
        finally:
            error = runner.teardown()
        if error is not None:
            raise error
    return tasks, rest

"""What runs inside a worker: one fused group of stages, set up once, torn down always.

`GroupRunner.run` takes one batch (up to the first stage's `batch_size` tasks) and returns, for
each input task, the tasks it became after every stage of the group. Each stage call is timed
into the outputs' `_stage_perf`, gets framework task IDs, is accounted (`accounting.settle`), and
an exception leaving it records the stage and shard it happened in.
"""

from __future__ import annotations

import functools
import time

from imagesieve.executors.accounting import settle, snapshot
from imagesieve.executors.errors import note_context, task_context
from imagesieve.stages.base import ProcessingStage, WorkerMetadata, as_task_list, stage_task_types
from imagesieve.tasks import ImageBatch, Task


def call_stage(stage: ProcessingStage, tasks: list[Task]) -> list[list[Task]]:
    """Run one stage on `tasks` (one call: `process` for a single task, else `process_batch`);
    returns the outputs of each input, in input order."""
    before = snapshot(tasks) if _may_return_images(type(stage)) else None
    began = time.perf_counter()
    try:
        if len(tasks) == 1 and not stage.supports_batch_processing():
            per_input = [as_task_list(stage.process(tasks[0]))]
        else:
            results = stage.process_batch(tasks)
            per_input = _per_input(tasks, results)
        settle(stage.name, before, per_input)
    except Exception as exc:
        note_context(exc, task_context(stage.name, tasks, exc))
        raise
    perf = {"stage": stage.name, "seconds": time.perf_counter() - began, "items": sum(t.num_items for t in tasks)}
    for task, outs in zip(tasks, per_input, strict=True):
        for k, out in enumerate(outs):
            if not out.task_id:  # framework-owned, as in the reference
                out.task_id = task.task_id if len(outs) == 1 else f"{task.task_id}_{k}"
            out._stage_perf = [*out._stage_perf, perf]
    return per_input


@functools.cache
def _may_return_images(stage_class: type) -> bool:
    """False for stages declared to make other tasks (writers): their calls need no accounting."""
    out_type = stage_task_types(stage_class)[1]
    return issubclass(out_type, ImageBatch) or issubclass(ImageBatch, out_type)


def _per_input(tasks: list[Task], results: list) -> list[list[Task]]:
    """Match what `process_batch` returned to its inputs: element by element when it returned one
    element per input (the reference's contract), else by image lineage, else all to the first."""
    if len(results) == len(tasks):
        return [as_task_list(r) for r in results]
    flat = as_task_list(results)
    per_input: list[list[Task]] = [[] for _ in tasks]
    owner = {(img.shard, img.image_id): i for i, t in enumerate(tasks) if isinstance(t, ImageBatch)
             for img in t.data}
    for out in flat:
        first = next((owner[k] for img in getattr(out, "data", None) or [] if isinstance(out, ImageBatch)
                      for k in [(img.shard, img.image_id)] if k in owner), 0)
        per_input[first].append(out)
    return per_input


class GroupRunner:
    """The stages of one fused group, in one worker."""

    def __init__(self, stages: list[ProcessingStage], worker: WorkerMetadata) -> None:
        self.stages = stages
        self.worker = worker
        self._set_up: list[ProcessingStage] = []

    def setup(self) -> None:
        for stage in self.stages:
            try:
                stage.setup(self.worker)
            except Exception as exc:
                note_context(exc, f"stage {stage.name!r}, setup on worker {self.worker.worker_id}")
                raise
            self._set_up.append(stage)

    def run(self, tasks: list[Task]) -> list[list[Task]]:
        per_input = call_stage(self.stages[0], tasks)
        for stage in self.stages[1:]:
            per_input = [[out for task in outs for out in call_stage(stage, [task])[0]] for outs in per_input]
        return per_input

    def teardown(self) -> BaseException | None:
        """Tear down every stage that was set up, even if one fails; returns the first error."""
        first: BaseException | None = None
        for stage in reversed(self._set_up):
            try:
                stage.teardown()
            except Exception as exc:
                first = first or note_context(exc, f"stage {stage.name!r}, teardown")
        self._set_up = []
        return first

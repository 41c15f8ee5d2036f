"""Pipeline: an ordered list of stages, checked for compatibility before anything runs."""

from __future__ import annotations

import typing

from imagesieve.stages.base import ProcessingStage
from imagesieve.tasks import EmptyTask, Task

# Fields every ImageObject carries once a reader made it.
BASE_IMAGE_FIELDS = {"image_id", "image_path", "metadata", "members", "shard", "image_ext"}


class PipelineError(ValueError):
    """The stages of a pipeline do not fit together."""


def stage_task_types(stage: ProcessingStage) -> tuple[type, type]:
    """The (input, output) task classes a stage declares through `ProcessingStage[In, Out]`."""
    for klass in type(stage).__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) is ProcessingStage:
                args = typing.get_args(base)
                if len(args) == 2 and all(isinstance(a, type) for a in args):
                    return args[0], args[1]
    return Task, Task


class Pipeline:
    """`Pipeline(name, stages).add_stage(...).run(executor)`."""

    def __init__(self, name: str, stages: list[ProcessingStage] | None = None, description: str = "") -> None:
        self.name = name
        self.description = description
        self.stages: list[ProcessingStage] = list(stages or [])

    def add_stage(self, stage: ProcessingStage) -> Pipeline:
        self.stages.append(stage)
        return self

    def validate(self) -> None:
        """Raise `PipelineError` unless each stage's inputs are met by the stages before it."""
        if not self.stages:
            raise PipelineError(f"pipeline {self.name!r} has no stages")
        produced = set(BASE_IMAGE_FIELDS)
        previous: ProcessingStage | None = None
        for stage in self.stages:
            if not isinstance(stage, ProcessingStage):
                raise PipelineError(f"{stage!r} is not a ProcessingStage")
            in_type, out_type = stage_task_types(stage)
            if previous is not None:
                prev_out = stage_task_types(previous)[1]
                if not (issubclass(prev_out, in_type) or issubclass(in_type, prev_out)):
                    raise PipelineError(
                        f"stage {stage.name!r} takes {in_type.__name__} but {previous.name!r} "
                        f"makes {prev_out.__name__}")
            _, item_fields = stage.inputs()
            missing = [f for f in item_fields if f not in produced]
            if previous is not None and missing:
                raise PipelineError(f"stage {stage.name!r} needs {missing}, which no earlier stage makes")
            produced.update(stage.outputs()[1])
            previous = stage

    def run(self, executor=None, initial_tasks: list[Task] | None = None) -> list[Task]:
        """Validate, then run on `executor` (default: a `LocalExecutor`); returns the last stage's tasks."""
        from imagesieve.executors.local import LocalExecutor

        self.validate()
        executor = executor or LocalExecutor()
        return executor.execute(self.stages, initial_tasks or [EmptyTask()])

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, stages={[s.name for s in self.stages]})"

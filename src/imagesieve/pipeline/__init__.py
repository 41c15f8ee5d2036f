"""Pipeline: an ordered list of stages, checked for compatibility before anything runs (`Pipeline`), and
the units of input a run gives it (`inputs`)."""

from __future__ import annotations

import warnings
from typing import Any

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor
from imagesieve.stages.base import ProcessingStage, stage_task_types
from imagesieve.tasks import EmptyTask, Task

# Fields every ImageObject carries once a reader made it.
BASE_IMAGE_FIELDS = {"image_id", "image_path", "metadata", "members", "shard", "image_ext"}


class PipelineError(ValueError):
    """The stages of a pipeline do not fit together."""


class Pipeline:
    """`Pipeline(name, description=None, stages=None, config=None)`, as in NeMo Curator 1.x:
    `.add_stage(...)` (chainable), `.build()`, `.describe()`, `.run(executor)`."""

    def __init__(self, name: str, description: str | list[ProcessingStage] | None = None,
                 stages: list[ProcessingStage] | None = None, config: dict[str, Any] | None = None) -> None:
        if isinstance(description, list):  # Pipeline(name, stages): this project's earlier order
            if stages is not None:
                raise TypeError("Pipeline(name, description=None, stages=None, config=None): stages given twice")
            warnings.warn("Pipeline(name, stages) is deprecated; use Pipeline(name, stages=stages) as in NeMo "
                          "Curator", DeprecationWarning, stacklevel=2)
            description, stages = None, description
        self.name = name
        self.description = description
        self.stages: list[ProcessingStage] = list(stages or [])
        self.config: dict[str, Any] = dict(config or {})
        self._built = False

    def add_stage(self, stage: ProcessingStage) -> Pipeline:
        self.stages.append(stage)
        self._built = False
        return self

    def build(self) -> Pipeline:
        """Check the pipeline (see `validate`) once; `run` calls it."""
        if not self._built:
            self.validate()
            self._built = True
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
            if type(stage).process is ProcessingStage.process and not stage.supports_batch_processing():
                raise PipelineError(f"stage {stage.name!r} overrides neither process nor process_batch")
            if stage.batch_size < 1:
                raise PipelineError(f"stage {stage.name!r}: batch_size must be >= 1, got {stage.batch_size}")
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

    def describe(self) -> str:
        """A readable summary: each stage with its resources, batch size and what it reads and writes."""
        lines = [f"Pipeline: {self.name}", *([f"Description: {self.description}"] if self.description else []),
                 f"Stages: {len(self.stages)}"]
        for i, stage in enumerate(self.stages, 1):
            res = stage.resources
            lines += [f"  {i}. {stage.name} ({type(stage).__name__})",
                      f"     resources: cpus={res.cpus}, gpu_memory_gb={res.gpu_memory_gb}, gpus={res.gpus}; "
                      f"batch_size={stage.batch_size}",
                      f"     inputs: {stage.inputs()}  outputs: {stage.outputs()}"]
        return "\n".join(lines)

    def run(self, executor: BaseExecutor | None = None, initial_tasks: list[Task] | None = None) -> list[Task]:
        """Build, then run on `executor` (default: a `LocalExecutor`); returns the last stage's tasks."""
        self.build()
        executor = executor or LocalExecutor()
        return executor.execute(self.stages, initial_tasks or [EmptyTask()])

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, stages={[s.name for s in self.stages]})"

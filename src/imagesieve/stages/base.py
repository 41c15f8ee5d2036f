"""The stage API: same names and meaning as NeMo Curator's `ProcessingStage`, without executor code.

A stage turns one task into zero, one or many tasks. Executors decide where stages run; stages do
not know which executor runs them, and any stage can be called directly (`setup()`, `process()`).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from imagesieve.tasks import Task

X = TypeVar("X", bound=Task)
Y = TypeVar("Y", bound=Task)


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0:
            raise ValueError(f"Resources must be non-negative, got cpus={self.cpus}, gpus={self.gpus}")

    @property
    def requires_gpu(self) -> bool:
        return self.gpus > 0


@dataclass(frozen=True)
class NodeInfo:
    """Identifies the machine a stage is set up on."""

    node_id: str = "local"


@dataclass(frozen=True)
class WorkerMetadata:
    """Identifies one worker of a stage."""

    worker_id: str = "0"
    node_id: str = "local"


class ProcessingStage(ABC, Generic[X, Y]):
    """Base class of every stage.

    Subclasses are dataclasses; `name`, `resources` and `batch_size` are class attributes or
    fields. `inputs()`/`outputs()` name the task attributes and `ImageObject` fields a stage needs
    and produces, so that `Pipeline` can check a chain of stages before anything runs.
    """

    name: str = "processing_stage"
    resources: Resources = Resources()
    batch_size: int = 1

    def inputs(self) -> tuple[list[str], list[str]]:
        """(task attributes, item fields) this stage reads."""
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        """(task attributes, item fields) this stage writes."""
        return [], []

    def num_workers(self) -> int | None:
        """A cap on this stage's workers per node, or None for no cap."""
        return None

    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        """Once per node before any worker starts: shared, node-local preparation (build an index)."""

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Once per worker: load what `process` needs (a model, an ID index)."""

    def teardown(self) -> None:
        """Once per worker, after its last task."""

    @abstractmethod
    def process(self, task: X) -> Y | list[Y] | None:
        """Process one task; None drops it, a list fans out."""

    def process_batch(self, tasks: list[X]) -> list[Y]:
        """Process `batch_size` tasks at once; the default calls `process` on each."""
        results: list[Y] = []
        for task in tasks:
            results.extend(as_task_list(self.process(task)))
        return results

    def with_(self, name: str | None = None, resources: Resources | None = None,
              batch_size: int | None = None) -> ProcessingStage[X, Y]:
        """A copy of this stage with other name, resources or batch size; the original is unchanged."""
        clone = copy.copy(self)
        if name is not None:
            clone.name = name
        if resources is not None:
            clone.resources = resources
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            clone.batch_size = batch_size
        return clone

    def config(self) -> dict[str, Any]:
        """The stage's settings, for the run folder's config.json."""
        fields = getattr(self, "__dataclass_fields__", {})
        return {"class": type(self).__name__, "name": self.name,
                **{k: _jsonable(getattr(self, k)) for k in fields if not k.startswith("_")}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def as_task_list(result: Task | list[Task] | None) -> list[Task]:
    """Normalise what `process` returns to a list."""
    if result is None:
        return []
    if isinstance(result, list):
        return result
    return [result]


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)

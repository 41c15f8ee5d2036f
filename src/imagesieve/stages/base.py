"""The stage API: same names and meaning as NeMo Curator's `ProcessingStage`, without executor code.

A stage turns one task into zero, one or many tasks (`process`), or a list of up to `batch_size`
tasks into a list (`process_batch`). Executors decide where stages run; stages do not know which
executor runs them, and any stage can be called directly (`setup()`, `process()`).
"""

from __future__ import annotations

import copy
import typing
from abc import ABC
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from imagesieve.tasks import Task

X = TypeVar("X", bound=Task)
Y = TypeVar("Y", bound=Task)

_UNSET: Any = object()


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. `gpu_memory_gb` (one GPU's share) or `gpus` (whole GPUs)."""

    cpus: float = 1.0
    gpu_memory_gb: float = 0.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if min(self.cpus, self.gpu_memory_gb, self.gpus) < 0:
            raise ValueError(f"Resources must be non-negative, got {self}")
        if self.gpus > 0 and self.gpu_memory_gb > 0:
            raise ValueError("Resources: give gpus (multi-GPU stages) or gpu_memory_gb (single-GPU stages), "
                             "not both")

    @property
    def requires_gpu(self) -> bool:
        return self.gpus > 0 or self.gpu_memory_gb > 0


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
    and produces, so that `Pipeline` can check a chain of stages before anything runs. A stage
    overrides `process`, or `process_batch`, or both.
    """

    name: str = "processing_stage"
    resources: Resources = Resources()
    batch_size: int = 1

    @property
    def _name(self) -> str:
        """`name`, under the read-only alias Curator's code and tests use."""
        return self.name

    def inputs(self) -> tuple[list[str], list[str]]:
        """(task attributes, item fields) this stage reads."""
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        """(task attributes, item fields) this stage writes."""
        return [], []

    def num_workers(self) -> int | None:
        """How many workers this stage gets in all, or None to let the executor decide."""
        return self.__dict__.get("_num_workers")

    def num_workers_per_node(self) -> int | None:
        """A cap on this stage's workers on each node, or None for no cap."""
        return self.__dict__.get("_num_workers_per_node")

    def resources_on(self, has_gpus: bool) -> Resources:
        """What a worker asks for on a cluster with (or without) GPUs, decided by the executor when it runs:
        `resources`, unless a stage that can use a GPU but needs none says otherwise."""
        return self.resources

    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        """Once per node before any worker starts: shared, node-local preparation (build an index)."""

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Once per worker: load what `process` needs (a model, an ID index)."""

    def teardown(self) -> None:
        """Once per worker, after its last task, and also when the run fails."""

    def process(self, task: X) -> Y | list[Y] | None:
        """Process one task; None drops it, a list fans out."""
        if self.supports_batch_processing():
            return self.process_batch([task])
        raise NotImplementedError(f"stage {self.name!r} ({type(self).__name__}) overrides neither process "
                                  "nor process_batch")

    def process_batch(self, tasks: list[X]) -> list[Y | list[Y] | None]:
        """Process up to `batch_size` tasks at once; the default calls `process` on each."""
        return [self.process(task) for task in tasks]

    def supports_batch_processing(self) -> bool:
        """True when the stage overrides `process_batch` (executors then always call it)."""
        return type(self).process_batch is not ProcessingStage.process_batch

    def with_(self, name: str | None = None, resources: Resources | None = None, batch_size: int | None = None,
              runtime_env: dict | None = None, ray_stage_spec: dict | None = None,
              xenna_stage_spec: dict | None = None, num_workers: int | None = _UNSET,
              num_workers_per_node: int | None = _UNSET) -> ProcessingStage[X, Y]:
        """A copy of this stage with other settings; the original is unchanged. Curator's `runtime_env`
        goes to the Ray workers' actors; `ray_stage_spec` and `xenna_stage_spec` (its backends' own
        settings) are accepted and have no effect, except Xenna's `num_workers_per_node`."""
        if xenna_stage_spec and "num_workers_per_node" in xenna_stage_spec and num_workers_per_node is _UNSET:
            num_workers_per_node = xenna_stage_spec["num_workers_per_node"]
        clone = copy.deepcopy(self)
        if runtime_env is not None:
            clone.__dict__["_runtime_env"] = dict(runtime_env)
        if name is not None:
            clone.name = name
        if resources is not None:
            clone.resources = resources
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size}")
            clone.batch_size = batch_size
        for key, value in (("_num_workers", num_workers), ("_num_workers_per_node", num_workers_per_node)):
            if value is not _UNSET:
                if value is not None and value < 1:
                    raise ValueError(f"{key[1:]} must be >= 1 or None, got {value}")
                clone.__dict__[key] = value
        if num_workers_per_node is not _UNSET and not callable(clone.num_workers_per_node):
            clone.num_workers_per_node = num_workers_per_node  # a stage with a field of that name (removal)
        return clone

    def get_config(self) -> dict[str, Any]:
        """The stage's settings (Curator's keys plus every dataclass field), for the run folder's config.json."""
        fields = getattr(self, "__dataclass_fields__", {})
        return {"class": type(self).__name__, "name": self.name, "resources": _jsonable(self.resources),
                "batch_size": self.batch_size, "supports_batch_processing": self.supports_batch_processing(),
                **{k: _jsonable(getattr(self, k)) for k in fields
                   if not k.startswith("_") and k != "storage_options"}}  # may hold credentials: never recorded

    config = get_config  # the name earlier imagesieve releases used

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def stage_task_types(stage: ProcessingStage | type) -> tuple[type, type]:
    """The (input, output) task classes a stage (or stage class) declares through `ProcessingStage[In, Out]`."""
    for klass in (stage if isinstance(stage, type) else type(stage)).__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) is ProcessingStage:
                args = typing.get_args(base)
                if len(args) == 2 and all(isinstance(a, type) for a in args):
                    return args[0], args[1]
    return Task, Task


def as_task_list(result: Task | list | None) -> list[Task]:
    """Normalise what `process` (or one element of `process_batch`'s list) returns to a flat list."""
    if result is None:
        return []
    if isinstance(result, list):
        return [task for item in result for task in as_task_list(item)]
    return [result]


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Resources):
        return {"cpus": value.cpus, "gpu_memory_gb": value.gpu_memory_gb, "gpus": value.gpus}
    return repr(value)

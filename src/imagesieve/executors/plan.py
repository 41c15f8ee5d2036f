"""Planning: which stages share a worker (fusion), and how many workers each group gets.

As Ray Data fuses operators, consecutive stages with equal resources and worker caps run in one
worker, one task after another, so no task (and no image byte) crosses processes between them.
A stage with `batch_size > 1` starts a new group: the group's input is cut into batches for it,
and the stages after it, if they fit, run in the same worker on what it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imagesieve.stages.base import ProcessingStage, Resources


def worker_caps(stage: ProcessingStage) -> tuple[int | None, int | None]:
    """(total, per node) worker caps of a stage. `num_workers_per_node` may be a method or a field
    (`ImageDuplicatesRemovalStage` has the reference's field of that name)."""
    per_node = stage.num_workers_per_node
    return stage.num_workers(), per_node() if callable(per_node) else per_node


@dataclass
class StageGroup:
    """Stages that run fused in one worker; the first one's batch size cuts the group's input."""

    index: int
    stages: list[ProcessingStage]

    @property
    def batch_size(self) -> int:
        return max(1, self.stages[0].batch_size)

    @property
    def resources(self) -> Resources:
        return self.stages[0].resources

    @property
    def caps(self) -> tuple[int | None, int | None]:
        return worker_caps(self.stages[0])

    @property
    def name(self) -> str:
        return "+".join(stage.name for stage in self.stages)

    def workers_on_node(self, cpus: float, gpus: float, wanted: int) -> int:
        """How many workers of this group fit on a node with `cpus` and `gpus`, capped by `wanted`
        and the per-node cap."""
        fit = wanted
        if self.resources.cpus > 0:
            fit = min(fit, math.floor(cpus / self.resources.cpus + 1e-9))
        needs_gpus = self.resources.gpus or (1.0 if self.resources.gpu_memory_gb else 0.0)
        if needs_gpus > 0:
            fit = min(fit, math.floor(gpus / needs_gpus + 1e-9))
        per_node = self.caps[1]
        return max(0, min(fit, per_node) if per_node else fit)


def with_cluster_resources(stages: list[ProcessingStage], has_gpus: bool) -> list[ProcessingStage]:
    """Each stage with what it asks for on this cluster (`ProcessingStage.resources_on`): a stage that
    can use a GPU asks for one only where there is one."""
    out = []
    for stage in stages:
        wanted = stage.resources_on(has_gpus)
        out.append(stage if wanted == stage.resources else stage.with_(resources=wanted))
    return out


def fuse(stages: list[ProcessingStage]) -> list[StageGroup]:
    """Cut `stages` into groups that each run fused in one worker."""
    groups: list[StageGroup] = []
    for stage in stages:
        last = groups[-1] if groups else None
        if (last is not None and stage.batch_size <= 1 and stage.resources == last.resources
                and worker_caps(stage) == last.caps):
            last.stages.append(stage)
        else:
            groups.append(StageGroup(len(groups), [stage]))
    return groups

"""Planning: which stages share a worker (fusion), and how many workers each group gets.

As Ray Data fuses operators, consecutive stages with equal resources and worker caps run in one
worker, one task after another, so no task (and no image byte) crosses processes between them.
A stage with `batch_size > 1` starts a new group: the group's input is cut into batches for it,
and the stages after it, if they fit, run in the same worker on what it returns.

A worker's GPUs (`gpus_per_worker`) are `Resources.gpus`, or for a `gpu_memory_gb` stage its share of
one device, as NeMo Curator computes `Resources.gpus`: `gpu_memory_gb` / a device's memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imagesieve.stages.base import ProcessingStage, Resources

# a device's memory when the executor is not told (NeMo Curator's figure when it cannot ask the driver)
DEVICE_MEMORY_GB = 24.0


def gpus_per_worker(resources: Resources, name: str, device_memory_gb: float = DEVICE_MEMORY_GB) -> float:
    """GPUs one worker of stage `name` needs: `gpus`, or for `gpu_memory_gb` its share of one device of
    `device_memory_gb`; 0 for a CPU stage. A share above one device, or a fraction above 1, is refused."""
    if resources.gpu_memory_gb > 0:
        share = resources.gpu_memory_gb / device_memory_gb
        if share > 1 + 1e-9:
            raise ValueError(f"stage {name!r} asks for gpu_memory_gb={resources.gpu_memory_gb}, more than one "
                             f"device has ({device_memory_gb} GB, the executor's device_memory_gb); give "
                             "Resources(gpus=n) for a stage that needs several devices")
        return min(1.0, max(share, 1e-4))  # Ray counts GPUs in steps of 0.0001
    if resources.gpus > 1 and resources.gpus != int(resources.gpus):
        raise ValueError(f"stage {name!r} asks for gpus={resources.gpus}: above 1, give a whole number "
                         "(a worker has whole devices, or a share of one)")
    return resources.gpus


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

    def gpus(self, device_memory_gb: float = DEVICE_MEMORY_GB) -> float:
        """GPUs one worker of this group needs (`gpus_per_worker`)."""
        return gpus_per_worker(self.resources, self.name, device_memory_gb)

    def workers_on_node(self, cpus: float, gpus: float | None, wanted: int,
                        device_memory_gb: float = DEVICE_MEMORY_GB) -> int:
        """How many workers of this group fit on a node with `cpus` and `gpus` (None: GPUs are counted
        elsewhere), capped by `wanted` and the per-node cap."""
        fit = wanted
        if self.resources.cpus > 0:
            fit = min(fit, math.floor(cpus / self.resources.cpus + 1e-9))
        needs_gpus = self.gpus(device_memory_gb)
        if needs_gpus > 0 and gpus is not None:
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

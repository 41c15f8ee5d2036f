"""RayExecutor: the same pipelines on a Ray cluster (or a local Ray instance), unchanged.

Why actors rather than Ray Data: our stages keep state from `setup()` (an ID index, a model) and
work on whole shards, one task at a time; an actor per worker slot holds that state for its
lifetime, and each task (one shard) runs through every stage inside one actor, so no sample data
crosses the network between stages. Actors are placed per node, which is what makes the
per-node settings exact: `setup_on_node()` runs once on every node before its actors start, and
`num_workers()` (e.g. `ImageDuplicatesRemovalStage.num_workers_per_node`) caps the actors of
each node. A worker that dies is restarted by Ray and its task retried; stages write their
outputs atomically, so a retried shard is written once, identically.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from imagesieve.executors.base import BaseExecutor, ProgressCallback, run_chain, split_planning
from imagesieve.stages.base import NodeInfo, ProcessingStage, WorkerMetadata
from imagesieve.tasks import Task


@dataclass(frozen=True)
class RayOptions:
    """Ray-only settings."""

    max_task_retries: int = 3  # retries of a task whose worker died
    max_restarts: int = 3  # restarts of a worker that died
    in_flight_per_worker: int = 2


class RayExecutor(BaseExecutor):
    """Runs a pipeline on Ray. `address`: a cluster to join (`ray://...`, `host:port`, "auto"); None
    starts a local Ray instance (or joins the one given by RAY_ADDRESS, as `ray.init` does)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, options: RayOptions = RayOptions(),
                 on_task_done: ProgressCallback | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.options = options
        self.on_task_done = on_task_done

    def _connect(self):
        import ray

        if not ray.is_initialized():
            kwargs = {"address": self.address} if self.address else {"num_cpus": self.num_cpus}
            ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False, **kwargs)
        return ray

    def parallelism(self) -> int:
        return max(1, int(self._connect().cluster_resources().get("CPU", 1)))

    def map(self, fn, jobs: list[tuple]) -> list:
        ray = self._connect()
        remote = ray.remote(fn).options(max_retries=self.options.max_task_retries)
        # an array shared by many jobs (the hash codes) goes to the object store once, not once a job
        stored: dict[int, object] = {}

        def share(arg: object) -> object:
            if isinstance(arg, np.ndarray) and arg.nbytes > 1 << 20:
                stored.setdefault(id(arg), ray.put(arg))
                return stored[id(arg)]
            return arg

        return ray.get([remote.remote(*map(share, job)) for job in jobs])

    def execute(self, stages: list[ProcessingStage], initial_tasks: list[Task]) -> list[Task]:
        tasks, stages = split_planning(stages, initial_tasks)
        if not stages or not tasks:
            return tasks
        ray = self._connect()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self._setup_nodes(ray, stages, nodes)
        actors = self._start_actors(ray, stages, nodes, len(tasks))
        results: list[list[Task]] = [[] for _ in tasks]
        try:
            for index, outputs in self._dispatch(ray, actors, tasks):
                results[index] = outputs
                if self.on_task_done:
                    self.on_task_done(tasks[index], outputs)
        finally:
            for actor in actors:
                ray.kill(actor)
        return [t for outputs in results for t in outputs]

    def _setup_nodes(self, ray, stages: list[ProcessingStage], nodes: list[dict]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(num_cpus=0)
        def setup_on_node(stages: list[ProcessingStage], node_id: str) -> None:
            for stage in stages:
                stage.setup_on_node(NodeInfo(node_id=node_id), WorkerMetadata(node_id=node_id))

        ray.get([setup_on_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                 .remote(stages, n["NodeID"]) for n in nodes])

    def _start_actors(self, ray, stages: list[ProcessingStage], nodes: list[dict], n_tasks: int) -> list:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cpus = max(s.resources.cpus for s in stages)
        gpus = max(s.resources.gpus for s in stages)
        caps = [c for c in (s.num_workers() for s in stages) if c]
        actor_class = ray.remote(_ChainWorker)
        actor_options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": self.options.max_restarts,
                         "max_task_retries": self.options.max_task_retries}
        actors = []
        for node in nodes:
            fit = int(node["Resources"].get("CPU", 0) // cpus) if cpus else n_tasks
            if gpus:
                fit = min(fit, int(node["Resources"].get("GPU", 0) // gpus))
            count = min([fit, n_tasks, *caps])
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            actors += [actor_class.options(scheduling_strategy=strategy, **actor_options)
                       .remote(stages, node["NodeID"], k) for k in range(count)]
        if not actors:
            raise RuntimeError(f"no Ray node has the resources a worker needs (cpus={cpus}, gpus={gpus})")
        return actors

    def _dispatch(self, ray, actors: list, tasks: list[Task]) -> Iterator[tuple[int, list[Task]]]:
        queue = list(enumerate(tasks))[::-1]
        pending: dict = {}
        idle = [a for a in actors for _ in range(self.options.in_flight_per_worker)]
        while queue or pending:
            while queue and idle:
                actor = idle.pop()
                index, task = queue.pop()
                pending[actor.run.remote(task)] = (index, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(done[0])
            idle.append(actor)
            yield index, ray.get(done[0])


class _ChainWorker:
    """One worker slot: sets the stages up once, then runs tasks through all of them."""

    def __init__(self, stages: list[ProcessingStage], node_id: str, slot: int) -> None:
        self.stages = stages
        for stage in stages:
            stage.setup(WorkerMetadata(worker_id=f"{node_id[:8]}-{slot}-{os.getpid()}", node_id=node_id))

    def run(self, task: Task) -> list[Task]:
        return run_chain(self.stages, task)

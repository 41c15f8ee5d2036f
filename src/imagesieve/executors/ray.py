"""RayExecutor: the same pipelines on a Ray cluster (or a local Ray instance), unchanged.

As Curator's actor-pool backend does, each fused stage group (see `plan.fuse`) gets its own pool
of actors, each sized by the group's `Resources`, and placed per node, which makes the per-node
settings exact: `setup_on_node()` runs once on every node before its actors start, and
`num_workers_per_node()` caps the actors of each node (`num_workers()` caps them in all). Tasks
stream between pools through the driver; they hold references to member bytes, never the bytes.
A worker that dies is restarted by Ray and its task retried, `RayOptions` times, then the run
stops with a plain error. An exception in an actor reaches the caller with its own type and
message, plus the stage and shard (Ray's `RayTaskError` wrapper is removed).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import numpy as np

from imagesieve.executors.base import BaseExecutor, ProgressCallback, split_planning
from imagesieve.executors.errors import WorkerDied, shard_of, terminate_cleanly, with_context
from imagesieve.executors.plan import DEVICE_MEMORY_GB, StageGroup, fuse, with_cluster_resources
from imagesieve.executors.runner import GroupRunner
from imagesieve.executors.scheduler import Scheduler
from imagesieve.stages.base import NodeInfo, ProcessingStage, WorkerMetadata
from imagesieve.storage.shard_copy import release_local_copies
from imagesieve.tasks import Task
from imagesieve.util.lifeline import reap_ray_sessions


@dataclass(frozen=True)
class RayOptions:
    """Ray-only settings."""

    max_task_retries: int = 3  # retries of a task whose worker died
    max_restarts: int = 3  # restarts of a worker that died
    in_flight_per_worker: int = 2
    device_memory_gb: float = DEVICE_MEMORY_GB  # one GPU's memory, which a `gpu_memory_gb` stage takes a share of


class RayExecutor(BaseExecutor):
    """Runs a pipeline on Ray. `address`: a cluster to join (`ray://...`, `host:port`, "auto"); None
    starts a new local Ray instance (or joins the one given by RAY_ADDRESS; never another user's
    cluster found on this machine, which `ray.init()` alone would join), whose
    processes all end with this process, even when it is killed (`lifeline.reap_ray_sessions`)."""

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
            if not self.address and not os.environ.get("RAY_ADDRESS"):  # a local instance of our own, not a cluster
                # "local": never join a cluster someone else started with `ray start` (ray.init's default)
                kwargs["address"] = "local"
                reap_ray_sessions()
            if self.address:
                refuse_unreachable(self.address)
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
        stages = with_cluster_resources(stages, any(n["Resources"].get("GPU", 0) > 0 for n in nodes))
        groups = fuse(stages)
        counts = self._plan_actors(groups, nodes, len(tasks))
        pools: list[_ActorPool] = []
        try:
            with terminate_cleanly():
                self._setup_nodes(ray, stages, nodes)
                pools = [_ActorPool(ray, g, nodes, c, self.options) for g, c in zip(groups, counts, strict=True)]
                results = Scheduler(groups, pools, lambda: _wait(ray, pools), self.on_task_done).run(tasks)
        except BaseException as exc:
            for pool in pools:
                pool.shutdown(graceful=False)
            raise _unwrap(ray, exc)  # noqa: B904 - the worker's own exception, with its context
        errors = [pool.shutdown(graceful=True) for pool in pools]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise _unwrap(ray, first)
        return results

    def _plan_actors(self, groups: list[StageGroup], nodes: list[dict], n_tasks: int) -> list[list[int]]:
        """Actors of each group on each node, all running at once: first one actor per group (on the
        node with most CPUs free), then more, group by group and node by node, while they fit."""
        free = [[n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)] for n in nodes]
        counts = [[0] * len(nodes) for _ in groups]
        wanted = [min(c for c in (g.caps[0], n_tasks if g.index == 0 else None, 1 << 30) if c) for g in groups]

        memory = self.options.device_memory_gb

        def place(g: int, k: int) -> bool:
            group, per_node = groups[g], groups[g].caps[1]
            if (sum(counts[g]) >= wanted[g] or (per_node and counts[g][k] >= per_node)
                    or group.workers_on_node(*free[k], 1, memory) < 1):
                return False
            counts[g][k] += 1
            free[k][0] -= group.resources.cpus
            free[k][1] -= group.gpus(memory)
            return True

        for g, group in enumerate(groups):
            if not any(place(g, k) for k in sorted(range(len(nodes)), key=lambda k: -free[k][0])):
                res = group.resources
                raise RuntimeError(
                    f"no Ray node has the resources a worker of stage {group.name!r} needs (cpus={res.cpus}, "
                    f"gpus={res.gpus}, gpu_memory_gb={res.gpu_memory_gb}) besides one worker of each stage "
                    "before it; nodes have " + "; ".join(f"CPU={n['Resources'].get('CPU', 0)} "
                                                         f"GPU={n['Resources'].get('GPU', 0)}" for n in nodes))
        while any([place(g, k) for g in range(len(groups)) for k in range(len(nodes))]):
            pass
        return counts

    def _setup_nodes(self, ray, stages: list[ProcessingStage], nodes: list[dict]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(num_cpus=0)
        def setup_on_node(stages: list[ProcessingStage], node_id: str) -> None:
            for stage in stages:
                stage.setup_on_node(NodeInfo(node_id=node_id), WorkerMetadata(node_id=node_id))

        ray.get([setup_on_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                 .remote(stages, n["NodeID"]) for n in nodes])


CONNECT_TIMEOUT = 10.0  # seconds to reach a named cluster's port before the run is refused


def refuse_unreachable(address: str) -> None:
    """A cluster address (`host:port`, `ray://host:port`) whose port does not answer is refused at once,
    naming it: `ray.init` would wait for it for minutes, deaf to SIGTERM."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; is it "
                              "running, and is the address its head node's (ray status prints it)?") from None


def actor_options(group: StageGroup, options: RayOptions) -> dict:
    """Ray's options for an actor of `group`: its `Resources` as `num_cpus` and `num_gpus` (Ray then gives
    the actor its own `CUDA_VISIBLE_DEVICES`), restarts and retries, and Curator's `runtime_env`."""
    settings = {"num_cpus": group.resources.cpus, "num_gpus": group.gpus(options.device_memory_gb),
                "max_restarts": options.max_restarts, "max_task_retries": options.max_task_retries}
    runtime_env = group.stages[0].__dict__.get("_runtime_env")  # Curator's with_(runtime_env=...)
    if runtime_env:
        settings["runtime_env"] = runtime_env
    return settings


class _ActorPool:
    """The actors of one group; free slots are `in_flight_per_worker` per actor."""

    def __init__(self, ray, group: StageGroup, nodes: list[dict], counts: list[int], options: RayOptions) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray, self.group, self.options = ray, group, options
        actor_class = ray.remote(_GroupWorker)
        settings = actor_options(group, options)
        self.actors = [actor_class.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"],
                                                                                            soft=False), **settings)
                       .remote(group, node["NodeID"], slot)
                       for node, count in zip(nodes, counts, strict=True) for slot in range(count)]
        self.slots = len(self.actors) * options.in_flight_per_worker
        self.load = {i: 0 for i in range(len(self.actors))}
        self.pending: dict = {}  # object ref -> (ticket, actor index, tasks)

    def free_slots(self) -> int:
        return self.slots - len(self.pending)

    def submit(self, ticket: int, tasks: list[Task]) -> None:
        index = min(self.load, key=self.load.get)
        self.load[index] += 1
        self.pending[self.actors[index].run.remote(tasks)] = (ticket, index, tasks)

    def complete(self, ref) -> tuple[int, list[list[Task]]]:
        ticket, index, tasks = self.pending.pop(ref)
        self.load[index] -= 1
        try:
            return ticket, self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:  # its queued tasks fail too: name every shard it held
            held = [*tasks, *(t for _, i, queued in self.pending.values() if i == index for t in queued)]
            where = ", ".join(dict.fromkeys(shard_of(t) for t in held))
            raise WorkerDied(f"a worker of stage {self.group.name!r} died (killed, or out of memory) and Ray's "
                             f"{self.options.max_restarts} restarts / {self.options.max_task_retries} retries "
                             f"are used up; it held shard(s) {where!r}; finished shards are kept, "
                             "rerun to resume") from exc

    def shutdown(self, graceful: bool) -> BaseException | None:
        """Tear down every actor (also after a failure, briefly), then end them."""
        error = None
        try:
            refs = [actor.teardown.remote() for actor in self.actors]
            done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=60 if graceful else 10)
            for ref in done:
                error = error or self.ray.get(ref)
        except Exception as exc:  # an actor that died cannot tear down
            error = error or (exc if graceful else None)
        for actor in self.actors:
            self.ray.kill(actor)
        return error


def _wait(ray, pools: list[_ActorPool]) -> list[tuple[int, list[list[Task]]]]:
    owner = {ref: pool for pool in pools for ref in pool.pending}
    done, _ = ray.wait(list(owner), num_returns=1)
    return [owner[ref].complete(ref) for ref in done]


def _unwrap(ray, exc: BaseException) -> BaseException:
    """The exception raised in the actor (not Ray's wrapper), with the stage and shard it ran."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            exc = cause
    return with_context(exc)


class _GroupWorker:
    """One actor: a fused group of stages, set up once, torn down when the driver asks."""

    def __init__(self, group: StageGroup, node_id: str, slot: int) -> None:
        self.runner = GroupRunner(group.stages, WorkerMetadata(worker_id=f"{node_id[:8]}-{group.index}-{slot}-"
                                                                         f"{os.getpid()}", node_id=node_id))
        self.setup_error: Exception | None = None
        try:
            self.runner.setup()
        except Exception as exc:  # raised by `run`, so that it reaches the driver as itself, not as a dead actor
            self.setup_error = exc

    def run(self, tasks: list[Task]) -> list[list[Task]]:
        if self.setup_error is not None:
            raise self.setup_error
        return self.runner.run(tasks)

    def teardown(self) -> BaseException | None:
        error = self.runner.teardown()
        release_local_copies()
        return error

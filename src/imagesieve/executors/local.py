"""LocalExecutor: a pool of processes on one machine, one task (shard) at a time per worker.

Memory stays bounded: at most `2 * workers` tasks are in flight, and each worker runs a task
through every stage before it takes the next one. With one worker everything runs in this
process, which is the easy way to debug a stage.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from imagesieve.executors.base import BaseExecutor, ProgressCallback, run_chain, split_planning
from imagesieve.stages.base import NodeInfo, ProcessingStage, WorkerMetadata
from imagesieve.tasks import Task

_worker_stages: list[ProcessingStage] = []


def _context(modules: set[str]):
    """Worker processes fork from a server that imported `modules` once, so each starts fast."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(sorted({__name__, *modules}))
    return context


def _init_worker(stages: list[ProcessingStage]) -> None:
    global _worker_stages
    _worker_stages = stages
    for stage in stages:
        stage.setup(WorkerMetadata(worker_id=str(os.getpid())))


def _run_in_worker(task: Task) -> list[Task]:
    return run_chain(_worker_stages, task)


class LocalExecutor(BaseExecutor):
    """Runs a pipeline on this machine with `num_workers` processes (default: all cores)."""

    def __init__(self, num_workers: int | None = None, on_task_done: ProgressCallback | None = None) -> None:
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.on_task_done = on_task_done

    def parallelism(self) -> int:
        return self.num_workers or os.cpu_count() or 1

    def map(self, fn, jobs: list[tuple]) -> list:
        workers = min(self.parallelism(), len(jobs))
        if workers <= 1:
            return super().map(fn, jobs)
        with ProcessPoolExecutor(workers, mp_context=_context({fn.__module__})) as pool:
            return list(pool.map(fn, *zip(*jobs, strict=True)))

    def worker_count(self, stages: list[ProcessingStage], n_tasks: int) -> int:
        caps = [c for c in (s.num_workers() for s in stages) if c]
        return max(1, min([self.parallelism(), n_tasks, *caps]))

    def execute(self, stages: list[ProcessingStage], initial_tasks: list[Task]) -> list[Task]:
        tasks, stages = split_planning(stages, initial_tasks)
        if not stages or not tasks:
            return tasks
        for stage in stages:
            stage.setup_on_node(NodeInfo(), WorkerMetadata())
        workers = self.worker_count(stages, len(tasks))
        results: list[list[Task]] = [[] for _ in tasks]
        runner = self._run_inline if workers == 1 else self._run_pool
        for index, outputs in runner(stages, tasks, workers):
            results[index] = outputs
            if self.on_task_done:
                self.on_task_done(tasks[index], outputs)
        return [t for outputs in results for t in outputs]

    def _run_inline(self, stages: list[ProcessingStage], tasks: list[Task], _: int) -> Iterator[tuple[int, list[Task]]]:
        for stage in stages:
            stage.setup(WorkerMetadata())
        try:
            for index, task in enumerate(tasks):
                yield index, run_chain(stages, task)
        finally:
            for stage in stages:
                stage.teardown()

    def _run_pool(self, stages: list[ProcessingStage], tasks: list[Task], workers: int
                  ) -> Iterator[tuple[int, list[Task]]]:
        context = _context({type(stage).__module__ for stage in stages})
        pending: dict[Future, int] = {}
        queue = iter(enumerate(tasks))
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(stages,)) as pool:
            try:
                while True:
                    while len(pending) < 2 * workers:
                        nxt = next(queue, None)
                        if nxt is None:
                            break
                        pending[pool.submit(_run_in_worker, nxt[1])] = nxt[0]
                    if not pending:
                        return
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield pending.pop(future), future.result()
            except BrokenProcessPool as exc:
                raise RuntimeError("a worker process died (killed, or out of memory); "
                                   "finished shards are kept, rerun to resume") from exc
            finally:
                for future in pending:
                    future.cancel()

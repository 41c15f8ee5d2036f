"""The driver's loop, shared by every executor: tasks stream from group to group, memory bounded.

Each fused group has a pool of workers (`Pool`). Tasks wait in a queue before their group; a
full batch (the group's `batch_size`) is sent to a free worker, a partial one only once nothing
upstream can add to it. A group stops taking work while the queue after it is long, so a fast
stage cannot flood a slow one. Every initial task is a root: when the last task descending from
it leaves the last group, `on_task_done(root, outputs)` is called.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from imagesieve.executors.plan import StageGroup
from imagesieve.tasks import Task

Completion = tuple[int, list[list[Task]]]  # (ticket, outputs of each input task)


class Pool(Protocol):
    group: StageGroup
    slots: int  # tasks it can hold at once

    def free_slots(self) -> int: ...

    def submit(self, ticket: int, tasks: list[Task]) -> None: ...


class Scheduler:
    def __init__(self, groups: list[StageGroup], pools: list[Pool], wait: Callable[[], Iterable[Completion]],
                 on_task_done: Callable[[Task, list[Task]], None] | None = None) -> None:
        self.groups, self.pools, self.wait, self.on_task_done = groups, pools, wait, on_task_done
        self.queues: list[deque[tuple[int, Task]]] = [deque() for _ in groups]
        self.in_flight: dict[int, tuple[int, list[tuple[int, Task]]]] = {}
        self._tickets = 0

    def run(self, tasks: list[Task]) -> list[Task]:
        """Run `tasks` through every group; returns the last group's outputs in the order of `tasks`."""
        self.roots = tasks
        self.outstanding = [1] * len(tasks)
        self.final: list[list[Task]] = [[] for _ in tasks]
        self.queues[0].extend(enumerate(tasks))
        while self.in_flight or any(self.queues):
            self._dispatch()
            if not self.in_flight:
                raise RuntimeError("scheduler stalled with queued tasks and no work in flight")  # a bug if seen
            for ticket, per_input in self.wait():
                self._complete(ticket, per_input)
        return [task for outputs in self.final for task in outputs]

    def _dispatch(self) -> None:
        for g in reversed(range(len(self.groups))):  # downstream first: it frees memory
            queue, pool, size = self.queues[g], self.pools[g], self.groups[g].batch_size
            while queue and pool.free_slots() > 0:
                if len(queue) < size and not self._upstream_idle(g):
                    break
                if g + 1 < len(self.groups) and len(self.queues[g + 1]) >= self._queue_limit(g + 1):
                    break
                batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                self._tickets += 1
                self.in_flight[self._tickets] = (g, batch)
                pool.submit(self._tickets, [task for _, task in batch])

    def _upstream_idle(self, g: int) -> bool:
        return not any(self.queues[:g]) and all(group >= g for group, _ in self.in_flight.values())

    def _queue_limit(self, g: int) -> int:
        return (2 * self.pools[g].slots + 2) * self.groups[g].batch_size

    def _complete(self, ticket: int, per_input: list[list[Task]]) -> None:
        g, batch = self.in_flight.pop(ticket)
        last = g + 1 == len(self.groups)
        for (root, _), outputs in zip(batch, per_input, strict=True):
            if last:
                self.final[root].extend(outputs)
            else:
                self.queues[g + 1].extend((root, task) for task in outputs)
                self.outstanding[root] += len(outputs)
            self.outstanding[root] -= 1
            if self.outstanding[root] == 0 and self.on_task_done:
                self.on_task_done(self.roots[root], self.final[root])

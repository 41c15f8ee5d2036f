"""Worker pools of the LocalExecutor: in this process, or in worker processes of their own.

Protocol of a worker process: the driver sends `(ticket, tasks)` on the worker's inbox and `None`
to stop; the worker answers `("done", ticket, outputs)`, `("error", ticket, exception)` and, last,
`("exit", None, teardown error or None)`. A thread in the worker reads the inbox at once, so the
driver never blocks sending while the worker is busy sending a result.

A pool of GPU workers (`devices`: one `CUDA_VISIBLE_DEVICES` value per worker) starts them fresh
(`spawn`): each sets its own `CUDA_VISIBLE_DEVICES` first, then unpickles its stages (importing their
modules) and sets them up, so no stage code runs before it, and no driver state (an initialised CUDA
context) is inherited. A worker that dies keeps its devices for its replacement.
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from imagesieve.executors.errors import CONTEXT_ATTR, WorkerDied, shard_of
from imagesieve.executors.plan import StageGroup
from imagesieve.executors.runner import GroupRunner
from imagesieve.stages.base import WorkerMetadata
from imagesieve.storage.shard_copy import release_local_copies
from imagesieve.tasks import Task
from imagesieve.util.lifeline import die_with

IN_FLIGHT_PER_WORKER = 2
SHUTDOWN_GRACE_SECONDS = 30.0


class InlinePool:
    """One worker, in the driver: each batch runs when submitted."""

    slots = 1

    def __init__(self, group: StageGroup) -> None:
        self.group = group
        self.runner = GroupRunner(group.stages, WorkerMetadata(worker_id=f"{group.index}-inline-{os.getpid()}"))
        self.done: deque = deque()
        self.runner.setup()

    def free_slots(self) -> int:
        return 0 if self.done else 1

    def submit(self, ticket: int, tasks: list[Task]) -> None:
        self.done.append((ticket, self.runner.run(tasks)))

    def shutdown(self, graceful: bool = True) -> BaseException | None:
        return self.runner.teardown()


@dataclass
class _Worker:
    process: object
    inbox: Connection
    outbox: Connection
    device: str | None = None  # its CUDA_VISIBLE_DEVICES (GPU pools)
    heard: bool = False  # it sent something: it started
    tickets: dict[int, list[Task]] = field(default_factory=dict)
    stopping: bool = False
    exited: bool = False
    eof: bool = False  # its result pipe is closed: the process is gone


class ProcessPool:
    """`workers` processes running one fused group; a worker that dies is replaced and its tasks
    retried, each at most `max_retries` times."""

    def __init__(self, group: StageGroup, workers: int, context, max_retries: int,
                 devices: list[str] | None = None) -> None:
        """`devices`: a GPU pool, one worker per entry (its CUDA_VISIBLE_DEVICES), started with `spawn`
        whatever `context` is; else `workers` workers started by `context`."""
        if devices is not None:
            context, workers = multiprocessing.get_context("spawn"), len(devices)
        self.group, self.context, self.max_retries = group, context, max_retries
        self.slots = workers * IN_FLIGHT_PER_WORKER
        self.attempts: dict[int, int] = {}
        self.teardown_error: BaseException | None = None
        self._started = 0
        self.spawned = devices is not None
        self.payload = _pickled(group) if self.spawned else group
        self.workers: list[_Worker] = []
        try:
            for device in devices if devices is not None else [None] * workers:
                self.workers.append(self._start(device))
        except BaseException:  # Ctrl-C while starting: no caller holds this pool yet, so stop what started here
            for worker in self.workers:
                _stop(worker.process)
            raise

    def _start(self, device: str | None) -> _Worker:
        task_r, task_w = self.context.Pipe(duplex=False)
        result_r, result_w = self.context.Pipe(duplex=False)
        self._started += 1
        env = {"CUDA_VISIBLE_DEVICES": device} if device is not None else None
        process = self.context.Process(target=_worker_main, name=f"imagesieve-{self.group.index}-{self._started}",
                                       args=(self.payload, self._started, task_r, result_w, os.getpid(), env))
        try:
            process.start()
            task_r.close()
            result_w.close()
            return _Worker(process, task_w, result_r, device)
        except BaseException:  # interrupted mid-start: a worker left waiting would keep the driver from exiting
            _stop(process)
            raise

    def free_slots(self) -> int:
        return sum(IN_FLIGHT_PER_WORKER - len(w.tickets) for w in self.workers if not w.stopping)

    def submit(self, ticket: int, tasks: list[Task]) -> None:
        worker = min((w for w in self.workers if not w.stopping), key=lambda w: len(w.tickets))
        worker.tickets[ticket] = tasks
        with contextlib.suppress(OSError):  # a worker that just died: its sentinel says so, and the task is retried
            worker.inbox.send((ticket, tasks))

    def waitables(self) -> list:
        return [obj for w in self.workers if not w.exited for obj in (w.outbox, w.process.sentinel)]

    def handle(self, ready: set) -> list[tuple[int, list[list[Task]]]]:
        """Read what the ready workers sent; replace workers that died."""
        done = []
        for worker in list(self.workers):
            if worker.exited:
                continue
            if worker.outbox in ready or worker.process.sentinel in ready:
                done += self._read(worker)
            if not worker.exited and (worker.eof or worker.process.sentinel in ready and not worker.outbox.poll()):
                self._died(worker)
        return done

    def _read(self, worker: _Worker) -> list:
        done = []
        while not worker.exited and worker.outbox.poll():
            try:
                kind, ticket, payload = worker.outbox.recv()
            except (EOFError, OSError):
                worker.eof = True
                break
            worker.heard = True
            if kind == "done":
                worker.tickets.pop(ticket, None)
                done.append((ticket, payload))
            elif kind == "error":
                raise payload
            else:  # exit
                worker.exited = True
                self.teardown_error = self.teardown_error or payload
        return done

    def _died(self, worker: _Worker) -> None:
        worker.process.join()
        worker.exited = True
        self.workers.remove(worker)
        if worker.stopping:
            return
        how = _exit_reason(worker.process.exitcode)
        if self.spawned and not worker.heard and (worker.process.exitcode or 0) > 0:  # the same again if retried
            raise WorkerDied(f"a GPU worker of stage {self.group.name!r} could not start ({how}; its error is "
                             "above): GPU workers start fresh (spawn), so the script that starts a run needs "
                             "`if __name__ == \"__main__\":` and its stages must be importable")
        for ticket, tasks in worker.tickets.items():
            self.attempts[ticket] = self.attempts.get(ticket, 0) + 1
            if self.attempts[ticket] > self.max_retries:
                where = ", ".join(dict.fromkeys(shard_of(t) for t in tasks))
                raise WorkerDied(f"a worker of stage {self.group.name!r} died ({how}) {self.attempts[ticket]} times "
                                 f"running shard {where!r}; finished shards are kept, rerun to resume")
        replacement = self._start(worker.device)
        self.workers.append(replacement)
        for ticket, tasks in worker.tickets.items():
            replacement.tickets[ticket] = tasks
            with contextlib.suppress(OSError):
                replacement.inbox.send((ticket, tasks))

    def shutdown(self, graceful: bool = True) -> BaseException | None:
        """Stop every worker (each tears its stages down); kill those that do not stop in time."""
        for worker in self.workers:
            worker.stopping = True
            with contextlib.suppress(OSError):
                worker.inbox.send(None)
        deadline = time.monotonic() + (SHUTDOWN_GRACE_SECONDS if graceful else 3.0)
        while any(not w.exited for w in self.workers) and time.monotonic() < deadline:
            ready = set(wait(self.waitables(), timeout=max(0.0, deadline - time.monotonic())))
            for worker in self.workers:
                if not worker.exited and (worker.outbox in ready or worker.process.sentinel in ready):
                    with contextlib.suppress(Exception):  # a late task error while stopping: the run ended
                        self._read(worker)
                    if worker.eof or worker.process.sentinel in ready and not worker.outbox.poll():
                        worker.exited = True
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join()
            worker.inbox.close()
            worker.outbox.close()
        return self.teardown_error


def _stop(process) -> None:
    """Kill a worker that may or may not have started, and reap it."""
    if process.pid is not None:
        process.kill()
        process.join()


def wait_all(pools: list) -> list[tuple[int, list[list[Task]]]]:
    """Block until some pool has results; returns them."""
    inline = [c for pool in pools if isinstance(pool, InlinePool) for c in _drain(pool.done)]
    if inline:
        return inline
    waitables = [obj for pool in pools if isinstance(pool, ProcessPool) for obj in pool.waitables()]
    ready = set(wait(waitables))
    return [c for pool in pools if isinstance(pool, ProcessPool) for c in pool.handle(ready)]


def _drain(items: deque) -> list:
    out = list(items)
    items.clear()
    return out


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (", perhaps out of memory" if name == "SIGKILL" else "")
    return f"exit code {code}"


def _pickled(group: StageGroup) -> bytes:
    """A GPU group as its spawned workers get it, so that they set their devices before its modules load."""
    try:
        return pickle.dumps(group)
    except Exception as exc:
        exc.add_note(f"stage {group.name!r} runs on GPU workers, which start fresh (spawn) and get their "
                     "stages pickled: each stage must pickle (load models in setup(), not in the constructor)")
        raise


def _worker_main(group: StageGroup | bytes, number: int, inbox: Connection, outbox: Connection, driver_pid: int,
                 env: dict[str, str] | None = None) -> None:
    if env:
        os.environ.update(env)  # first: before any stage module is imported (unpickled below) or set up
    die_with(driver_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops us in order
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    tasks: queue.Queue = queue.Queue()
    threading.Thread(target=_read_inbox, args=(inbox, tasks), daemon=True).start()
    runner = GroupRunner([], WorkerMetadata())
    try:
        if isinstance(group, bytes):
            group = pickle.loads(group)
        runner = GroupRunner(group.stages, WorkerMetadata(worker_id=f"{group.index}-{number}-{os.getpid()}"))
        runner.setup()
        while (message := tasks.get()) is not None:
            ticket, batch = message
            try:
                outbox.send(("done", ticket, runner.run(batch)))
            except Exception as exc:
                outbox.send(("error", ticket, _portable(exc)))
    except Exception as exc:  # the stages could not be loaded or set up
        outbox.send(("error", None, _portable(exc)))
    finally:
        error = runner.teardown()
        release_local_copies()
        outbox.send(("exit", None, _portable(error) if error else None))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # skip the stages' and libraries' atexit work, done by the driver


def _read_inbox(inbox: Connection, tasks: queue.Queue) -> None:
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):  # the driver is gone
            os._exit(1)
        tasks.put(message)
        if message is None:
            return


def _portable(exc: BaseException) -> BaseException:
    """`exc` as it can travel to the driver: its worker traceback as a note, picklable."""
    exc.add_note("in the worker:\n" + "".join(traceback.format_exception(exc)).rstrip())
    try:
        pickle.dumps(exc)
        copy.deepcopy(exc)  # rebuilt as unpickling would rebuild it
        return exc
    except Exception:
        plain = RuntimeError(f"{type(exc).__name__}: {exc}")
        setattr(plain, CONTEXT_ATTR, getattr(exc, CONTEXT_ATTR, None))
        plain.__notes__ = list(getattr(exc, "__notes__", []))
        return plain

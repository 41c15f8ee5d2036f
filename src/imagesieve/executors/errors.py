"""Errors from workers, stated plainly: the original type and message, plus where it happened.

In the worker, `note_context` records the stage and shard on the exception (an attribute, so it
survives pickling to the driver). In the driver, `with_context` returns an exception of the same
type whose first line is `<message> (stage 'x', shard 'y')`, which is what the command line shows.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from imagesieve.tasks import ImageBatch, ImageObject, Task

CONTEXT_ATTR = "imagesieve_context"


class WorkerDied(RuntimeError):
    """A worker process or actor died (killed, or out of memory) more often than retries allow."""


class Terminated(KeyboardInterrupt):
    """The driver got SIGTERM; it stops its workers and keeps finished shards."""


def task_context(stage_name: str, tasks: list[Task], exc: BaseException | None = None) -> str:
    """"stage 'x', shard 'y'", and "key 'z'" when the image being handled is known."""
    parts = [f"stage {stage_name!r}"]
    shards = list(dict.fromkeys(shard_of(t) for t in tasks))
    if shards:
        parts.append(f"shard {', '.join(shards)!r}" if len(shards) == 1 else f"shards {shards!r}")
    image = _image_at_fault(exc)
    if image is None and len(tasks) == 1 and isinstance(tasks[0], ImageBatch) and len(tasks[0].data) == 1:
        image = tasks[0].data[0]
    if image is not None:
        parts.append(f"key {image.image_id!r}")
    return ", ".join(parts)


def _image_at_fault(exc: BaseException | None) -> ImageObject | None:
    """The image a stage was handling when it raised: the one `ImageObject` local (a loop variable,
    as in `for image in task.data: ... raise`) of the frame that raised, if it has exactly one."""
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    found = [v for v in tb.tb_frame.f_locals.values() if isinstance(v, ImageObject)] if tb is not None else []
    return found[0] if len(found) == 1 else None


def shard_of(task: Task) -> str:
    meta = task._metadata
    if meta.get("shard"):
        return str(meta["shard"])
    if isinstance(task.data, list) and task.data and isinstance(task.data[0], str):
        return ", ".join(task.data)
    return task.task_id or task.dataset_name


def note_context(exc: BaseException, context: str) -> BaseException:
    """Record where `exc` happened, once (the innermost stage wins)."""
    if not getattr(exc, CONTEXT_ATTR, None):
        with contextlib.suppress(AttributeError):  # exceptions without a __dict__
            setattr(exc, CONTEXT_ATTR, context)
    return exc


def with_context(exc: BaseException) -> BaseException:
    """`exc` with its recorded context appended to its message, keeping its type."""
    context = getattr(exc, CONTEXT_ATTR, None)
    if not context or getattr(exc, "_imagesieve_shown", False):
        return exc
    text = str(exc)
    message = f"{text} ({context})" if text else f"{type(exc).__name__} ({context})"
    if exc.args and isinstance(exc.args[0], str) and text == exc.args[0]:
        exc.args = (message, *exc.args[1:])
        new = exc
    else:  # str() is not args[0] (KeyError, OSError, ...): a same-type subclass that says it
        try:
            new = _speaking(type(exc))(*exc.args)
            new.__dict__.update(exc.__dict__)
            new._imagesieve_message = message
            new.__cause__, new.__traceback__ = exc.__cause__, exc.__traceback__
        except Exception:  # constructors that take other arguments: keep the exception, add a note
            exc.add_note(context)
            new = exc
    new._imagesieve_shown = True
    return new


@functools.cache
def _speaking(cls: type[BaseException]) -> type[BaseException]:
    def __str__(self) -> str:
        return self._imagesieve_message

    return type(cls.__name__, (cls,), {"__str__": __str__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


@contextmanager
def terminate_cleanly() -> Iterator[None]:
    """While a run is on, SIGTERM stops it as Ctrl-C does: workers are shut down, finished shards kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

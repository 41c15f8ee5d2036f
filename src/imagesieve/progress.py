"""A progress bar over shards that also counts samples, for long runs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from imagesieve.tasks import Task


class ShardProgress:
    """tqdm over shards; `update` is an executor's per-task callback."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "") -> None:
        self.samples = 0
        self._bar = tqdm(total=total, initial=initial, unit="shard", desc=desc, disable=not enabled,
                         file=sys.stderr, dynamic_ncols=True)

    def update(self, task: Task, outputs: list[Task]) -> None:
        self.samples += sum(int(t._metadata.get("samples_in", t.num_items)) for t in outputs)
        self._bar.set_postfix(samples=self.samples, refresh=False)
        self._bar.update(1)

    def __enter__(self) -> ShardProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


@contextmanager
def phase(name: str, enabled: bool = True) -> Iterator[None]:
    """Announce a phase that has no natural unit of progress, and how long it took."""
    started = time.monotonic()
    if enabled:
        print(f"{name} ...", file=sys.stderr, flush=True)
    yield
    if enabled:
        print(f"{name}: done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

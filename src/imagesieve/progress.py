"""A progress bar over shards that also counts samples, for long runs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import TextIO

from imagesieve.tasks import Task


class ShardProgress:
    """Progress over shards, as an executor's per-task callback (`update`).

    On a terminal, a tqdm bar; in a log file or a pipe, a plain line every `every` seconds and at
    the end, since a redrawn bar there is one endless line of carriage returns.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "",
                 every: float = 10.0, stream: TextIO | None = None) -> None:
        self.samples, self.done, self.total, self.desc = 0, initial, total, desc
        self._stream = stream or sys.stderr
        self._lines = enabled and not self._stream.isatty()
        self._every, self._started = every, time.monotonic()
        self._last = self._started
        self._bar = self._tqdm(total, initial) if enabled and not self._lines else None
        if self._lines:
            self._line(f"{total} shards ({initial} already done)")

    def update(self, task: Task, outputs: list[Task]) -> None:
        self.samples += sum(int(t._metadata.get("samples_in", t.num_items)) for t in outputs)
        part = getattr(task, "_metadata", {}).get("part")  # (index, count): a part of a shard
        share = Fraction(1, part[1]) if part else 1  # exact: the parts of a shard add up to 1
        self.done += share
        if self._bar is not None:
            self._bar.set_postfix(samples=self.samples, refresh=False)
            self._bar.update(float(share))
        now = time.monotonic()
        if self._lines and (now - self._last >= self._every or self.done == self.total):
            self._last = now
            self._line(f"{float(self.done):g}/{self.total} shards, {self.samples} samples, {now - self._started:.0f} s")

    def _tqdm(self, total: int, initial: int) -> object:
        """The bar on a terminal; tqdm is imported only then (~15 ms of every run's start-up otherwise)."""
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="shard", desc=self.desc, file=self._stream, dynamic_ncols=True)

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self._stream, flush=True)

    def __enter__(self) -> ShardProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
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

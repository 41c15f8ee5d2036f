"""What the workflows share: running a per-shard pipeline over the shards not yet done."""

from __future__ import annotations

import os

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline import Pipeline
from imagesieve.progress import ShardProgress
from imagesieve.stages.base import ProcessingStage
from imagesieve.tasks import FileGroupTask, Task


def absolute_paths(paths: str | list[str]) -> list[str]:
    """Input paths as absolute paths, so that a run folder can be read (and resumed) from anywhere."""
    return [os.path.abspath(p) for p in ([paths] if isinstance(paths, str) else paths)]


def shard_tasks(shards: list[tuple[str, str]]) -> list[FileGroupTask]:
    """One task per (path, relative path) shard; the relative path names its outputs."""
    return [FileGroupTask(dataset_name="input", data=[path], task_id=rel, _metadata={"relative_paths": {path: rel}})
            for path, rel in shards]


def run_on_shards(name: str, stages: list[ProcessingStage], todo: list[tuple[str, str]], total: int,
                  executor: BaseExecutor | None, progress: bool) -> list[Task]:
    """Run `stages` on the shards of `todo`, with a progress bar over all `total` shards."""
    executor = executor or LocalExecutor()
    with ShardProgress(total, initial=total - len(todo), enabled=progress, desc=name) as bar:
        executor.on_task_done = bar.update
        if not todo:
            return []
        return Pipeline(name, stages=stages).run(executor, initial_tasks=shard_tasks(todo))

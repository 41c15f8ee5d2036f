"""What the workflows share: running a per-shard pipeline over the shards not yet done."""

from __future__ import annotations

import os

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline import Pipeline
from imagesieve.progress import ShardProgress
from imagesieve.runfolder import strip_shard_suffix
from imagesieve.stages.base import ProcessingStage
from imagesieve.stages.io.partitioning import list_shards
from imagesieve.stages.io.sidecar import sidecar_path
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


def input_shards(input_path: str | list[str], output_dir: str) -> list[tuple[str, str]]:
    """The shards to read: those of `input_path`, minus any inside `output_dir` (our own earlier output).

    Refuses an output folder that is the input folder, since output shards would replace inputs.
    """
    out = os.path.realpath(output_dir)
    shards = []
    for path, rel in list_shards(input_path):
        real = os.path.realpath(path)
        if real.startswith(out + os.sep):
            if os.path.realpath(os.path.join(out, rel)) == real:
                raise ValueError(f"output folder {output_dir} is where the input shard {path} lies; "
                                 "choose another output folder")
            continue
        shards.append((path, rel))
    if not shards:
        raise FileNotFoundError(f"no input shards in {input_path} outside the output folder {output_dir}")
    check_sidecars_distinct(shards)
    return shards


def check_sidecars_distinct(shards: list[tuple[str, str]]) -> None:
    """x.tar and x.tar.gz would both filter x.parquet into the same output file: refuse that input."""
    by_stem: dict[str, str] = {}
    for path, rel in shards:
        stem = strip_shard_suffix(rel)
        if stem in by_stem and os.path.exists(sidecar_path(path)):
            raise ValueError(f"{by_stem[stem]} and {path} share the metadata table {sidecar_path(path)}; "
                             "keep only one of the two shards in the input")
        by_stem[stem] = path

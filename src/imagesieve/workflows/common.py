"""What the workflows share: running a per-shard pipeline over the shards (or folder chunks) not yet done."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline import Pipeline
from imagesieve.pipeline.inputs import InputUnit, check_input_first, split_tail
from imagesieve.progress import ShardProgress
from imagesieve.stages.base import ProcessingStage
from imagesieve.stages.io.folder import ImageFolderReaderStage
from imagesieve.stages.io.reader import ImageReaderStage
from imagesieve.storage import absolute, as_given, makedirs, storage_for
from imagesieve.storage.runfolder import removed_if_refused, run_lock
from imagesieve.tasks import Task

T = TypeVar("T")


def absolute_paths(paths: str | list[str]) -> list[str]:
    """Input paths as absolute paths (URLs as they are), so that a run folder can be read (and resumed)
    from anywhere."""
    return [absolute(p) for p in ([paths] if isinstance(paths, str) else paths)]


def given_paths(paths: str | list[str]) -> str | list[str]:
    """`storage.as_given` of one input path or of each of a list: `file://` URLs as local paths."""
    return as_given(paths) if isinstance(paths, str) else [as_given(p) for p in paths]


def run_in_locked_folder(input_path: str | list[str], output_dir: str, command: str, run: Callable[[], T],
                         storage_options: dict | None = None, config: object = None) -> T:
    """Check the input first (so that a refused run creates nothing; with what `config` names besides
    it: `sources_read`), make the output folder, hold its lock for the whole run, and run."""
    check_input_first(input_path, output_dir, storage_options, sources_read(config))
    with removed_if_refused(output_dir):
        makedirs(output_dir)
        with run_lock(output_dir, command, storage_options):
            return run()


def sources_read(config: object) -> dict[str, str | list[str] | None]:
    """What a finder's settings make it read besides INPUT: precomputed embeddings, a model folder."""
    return {what: getattr(config, name, None) for name, what in (("embeddings", "embeddings"), ("model", "model"))}


def run_on_units(name: str, stages: list[ProcessingStage], todo: list[InputUnit], total: int,
                 executor: BaseExecutor | None, progress: bool, split: bool = False) -> list[Task]:
    """Run `stages` on the units (shards or folder chunks) of `todo`, with progress over all `total`;
    with `split`, the last shards in parts (`split_tail`)."""
    executor = executor or LocalExecutor()
    with ShardProgress(total, initial=total - len(todo), enabled=progress, desc=name) as bar:
        executor.on_task_done = bar.update
        if not todo:
            return []
        tasks = [unit.task() for unit in todo]
        if split and not todo[0].is_folder_chunk:
            tasks = split_tail(tasks, executor.parallelism())
        return Pipeline(name, stages=stages).run(executor, initial_tasks=tasks)


def reader_for(units: list[InputUnit], storage_options: dict | None = None) -> ProcessingStage:
    """The stage that reads these units: tar shards (local or on object storage) or image-folder chunks."""
    if units and units[0].is_folder_chunk:
        return ImageFolderReaderStage()
    sizes = [storage_for(unit.paths[0], storage_options).size(unit.paths[0]) for unit in units]
    return ImageReaderStage(storage_options=storage_options, input_bytes=sum(sizes))

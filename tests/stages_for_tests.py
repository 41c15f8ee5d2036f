"""Stages used by the runtime tests, local and on Ray: written as a NeMo Curator user writes them.

They log what happened to files under `log_dir` (one line per event), so a test can see what ran
in which worker process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imagesieve import ImageBatch, ProcessingStage, WorkerMetadata


def log(log_dir: str, name: str, line: str) -> None:
    with open(os.path.join(log_dir, name), "a") as f:
        f.write(line + "\n")


def lines(log_dir: str, name: str) -> list[str]:
    path = Path(log_dir, name)
    return path.read_text().splitlines() if path.exists() else []


@dataclass
class BrightnessFilterStage(ProcessingStage[ImageBatch, ImageBatch]):
    """A filter as the reference's filters are written: `process_batch` only, reads `image_data`,
    returns fresh `ImageBatch`es with fewer images and the input's `_metadata`."""

    log_dir: str = ""
    threshold: float = 110.0
    name: str = "brightness_filter"
    batch_size: int = 2

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        log(self.log_dir, "setup", str(os.getpid()))

    def teardown(self) -> None:
        log(self.log_dir, "teardown", str(os.getpid()))

    def process_batch(self, tasks: list[ImageBatch]) -> list[ImageBatch]:
        log(self.log_dir, "batches", str(len(tasks)))
        return [ImageBatch(data=[image for image in task.data if image.image_data.mean() >= self.threshold],
                           dataset_name=task.dataset_name, _metadata=task._metadata, _stage_perf=task._stage_perf)
                for task in tasks]


@dataclass
class FailingStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Raises on one shard, or (with `exit_code`) kills its worker there, `times` times in all."""

    log_dir: str = ""
    shard: str = "00001.tar"
    exit_code: int | None = None
    times: int = 1_000
    name: str = "fails_on_a_shard"

    def teardown(self) -> None:
        log(self.log_dir, "teardown", str(os.getpid()))

    def process(self, task: ImageBatch) -> ImageBatch:
        if task._metadata["relative_path"] == self.shard and len(lines(self.log_dir, "failures")) < self.times:
            log(self.log_dir, "failures", str(os.getpid()))
            if self.exit_code is not None:
                os._exit(self.exit_code)
            for image in task.data:
                if image.image_id.endswith("8"):
                    raise ValueError(f"cannot handle {len(task.data)} images")
        return task


class BrokenSetupStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Its setup fails, as loading a missing model does."""

    name = "broken_setup"

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        raise FileNotFoundError(2, "No such file or directory", "model.bin")

    def process(self, task: ImageBatch) -> ImageBatch:
        return task


@dataclass
class AddImageStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Appends a new image to each batch, made from pixels (no member bytes read from a shard)."""

    name: str = "adds_an_image"

    def process(self, task: ImageBatch) -> ImageBatch:
        import numpy as np

        from imagesieve import ImageObject

        task.data.append(ImageObject(image_id=f"made-{task.task_id}", image_data=np.zeros((4, 4, 3), np.uint8)))
        return task


@dataclass
class RegroupStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Takes two batches at once and merges them into one ("merge") or moves an image from the first to the
    second ("move"): images that leave their own shard's batch."""

    how: str = "merge"
    name: str = "regroup"
    batch_size: int = 2

    def process(self, task: ImageBatch) -> ImageBatch:
        return task

    def process_batch(self, tasks: list[ImageBatch]) -> list[ImageBatch]:
        if len(tasks) < 2:
            return tasks
        if self.how == "merge":
            tasks[0].data.extend(tasks[1].data)
            return [tasks[0]]
        tasks[1].data.append(tasks[0].data.pop(0))
        return tasks

"""imagesieve: find and remove duplicate images in WebDataset training shards.

Every public name of the library API is importable from here, so that a NeMo Curator pipeline
needs only its import lines changed.
"""

from imagesieve.executors.accounting import AccountingError
from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.errors import WorkerDied
from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline import Pipeline, PipelineError
from imagesieve.stages.base import NodeInfo, ProcessingStage, Resources, WorkerMetadata
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.stages.hashing import HashWriterStage, ImageHashStage
from imagesieve.stages.io import FilePartitioningStage, ImageReaderStage, ImageWriterStage
from imagesieve.tasks import EmptyTask, FileGroupTask, ImageBatch, ImageObject, Ledger, Removal, Task

__all__ = ["AccountingError", "BaseExecutor", "EmptyTask", "FileGroupTask", "FilePartitioningStage",
           "HashWriterStage", "ImageBatch", "ImageDuplicatesRemovalStage", "ImageHashStage", "ImageObject",
           "ImageReaderStage", "ImageWriterStage", "Ledger", "LocalExecutor", "NodeInfo", "Pipeline", "PipelineError",
           "ProcessingStage", "RayExecutor", "RayOptions", "Removal", "Resources", "Task", "WorkerDied",
           "WorkerMetadata"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("RayExecutor", "RayOptions"):  # Ray is optional: imported on first use
        from imagesieve.executors import ray

        return getattr(ray, name)
    raise AttributeError(f"module 'imagesieve' has no attribute {name!r}")

"""imagesieve: find and remove duplicate images in WebDataset training shards.

Every public name of the library API is importable from here, so that a NeMo Curator pipeline
needs only its import lines changed.
"""

from typing import TYPE_CHECKING

# name -> module. Imported on first use, so that the command line starts fast and a Ctrl-C while it
# starts is handled by the command line, not shown as a traceback from some import.
_EXPORTS = {
    "BaseExecutor": "imagesieve.executors.base",
    "WorkerDied": "imagesieve.executors.errors",
    "LocalExecutor": "imagesieve.executors.local",
    "RayExecutor": "imagesieve.executors.ray",  # Ray is optional
    "RayOptions": "imagesieve.executors.ray",
    "Pipeline": "imagesieve.pipeline",
    "PipelineError": "imagesieve.pipeline",
    "NodeInfo": "imagesieve.stages.base",
    "ProcessingStage": "imagesieve.stages.base",
    "Resources": "imagesieve.stages.base",
    "WorkerMetadata": "imagesieve.stages.base",
    "ImageDuplicatesRemovalStage": "imagesieve.stages.deduplication.removal",
    "EmbeddingWriterStage": "imagesieve.stages.embedding",
    "ImageEmbeddingStage": "imagesieve.stages.embedding",
    "SemanticDeduplicationWorkflow": "imagesieve.workflows.semantic",
    "WorkflowRunResult": "imagesieve.workflows.semantic",
    "HashWriterStage": "imagesieve.stages.hashing",
    "ImageHashStage": "imagesieve.stages.hashing",
    "FilePartitioningStage": "imagesieve.stages.io",
    "ImageReaderStage": "imagesieve.stages.io",
    "ImageWriterStage": "imagesieve.stages.io",
    "ConvertImageBatchToDocumentBatchStage": "imagesieve.stages.io.documents",
    "ParquetWriter": "imagesieve.stages.io.documents",
    # the workflows, as the README names them
    "find_duplicates": "imagesieve.workflows.find",
    "FindConfig": "imagesieve.workflows.find",
    "remove_duplicates": "imagesieve.workflows.remove",
    "dedup": "imagesieve.workflows.dedup",
    "SemanticConfig": "imagesieve.workflows.semantic_find",
    "find_semantic": "imagesieve.workflows.semantic_find",
    "CopyConfig": "imagesieve.workflows.copy_find",
    "find_copies": "imagesieve.workflows.copy_find",
    "write_report": "imagesieve.report",
    **{name: "imagesieve.tasks" for name in ("AccountingError", "DocumentBatch", "EmptyTask", "FileGroupTask",
                                              "ImageBatch", "ImageObject", "Ledger", "MemberRef", "Removal", "Task")},
}

if TYPE_CHECKING:
    from imagesieve.executors.base import BaseExecutor
    from imagesieve.executors.errors import WorkerDied
    from imagesieve.executors.local import LocalExecutor
    from imagesieve.executors.ray import RayExecutor, RayOptions
    from imagesieve.pipeline import Pipeline, PipelineError
    from imagesieve.report import write_report
    from imagesieve.stages.base import NodeInfo, ProcessingStage, Resources, WorkerMetadata
    from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
    from imagesieve.stages.embedding import EmbeddingWriterStage, ImageEmbeddingStage
    from imagesieve.stages.hashing import HashWriterStage, ImageHashStage
    from imagesieve.stages.io import FilePartitioningStage, ImageReaderStage, ImageWriterStage
    from imagesieve.stages.io.documents import ConvertImageBatchToDocumentBatchStage, ParquetWriter
    from imagesieve.tasks import (
        AccountingError,
        DocumentBatch,
        EmptyTask,
        FileGroupTask,
        ImageBatch,
        ImageObject,
        Ledger,
        MemberRef,
        Removal,
        Task,
    )
    from imagesieve.workflows.copy_find import CopyConfig, find_copies
    from imagesieve.workflows.dedup import dedup
    from imagesieve.workflows.find import FindConfig, find_duplicates
    from imagesieve.workflows.remove import remove_duplicates
    from imagesieve.workflows.semantic import SemanticDeduplicationWorkflow, WorkflowRunResult
    from imagesieve.workflows.semantic_find import SemanticConfig, find_semantic

__all__ = ["AccountingError", "BaseExecutor", "ConvertImageBatchToDocumentBatchStage", "CopyConfig", "DocumentBatch",
           "EmbeddingWriterStage", "EmptyTask", "FileGroupTask", "FilePartitioningStage", "FindConfig",
           "HashWriterStage", "ImageBatch", "ImageDuplicatesRemovalStage", "ImageEmbeddingStage",
           "ImageHashStage", "ImageObject", "ImageReaderStage", "ImageWriterStage", "Ledger",
           "LocalExecutor", "MemberRef", "NodeInfo", "ParquetWriter", "Pipeline", "PipelineError",
           "ProcessingStage", "RayExecutor", "RayOptions", "Removal", "Resources", "SemanticConfig",
           "SemanticDeduplicationWorkflow", "Task", "WorkerDied", "WorkerMetadata", "WorkflowRunResult",
           "dedup", "find_copies", "find_duplicates", "find_semantic", "remove_duplicates", "write_report"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'imagesieve' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

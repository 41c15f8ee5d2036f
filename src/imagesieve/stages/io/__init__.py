"""Reading and writing WebDataset shards."""

from imagesieve.stages.io.partitioning import FilePartitioningStage
from imagesieve.stages.io.reader import ImageReaderStage
from imagesieve.stages.io.writer import ImageWriterStage

__all__ = ["FilePartitioningStage", "ImageReaderStage", "ImageWriterStage"]

"""imagesieve: find and remove duplicate images in WebDataset training shards."""

from imagesieve.pipeline import Pipeline
from imagesieve.stages.base import ProcessingStage, Resources
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.tasks import FileGroupTask, ImageBatch, ImageObject, Task

__all__ = ["FileGroupTask", "ImageBatch", "ImageDuplicatesRemovalStage", "ImageObject", "Pipeline",
           "ProcessingStage", "Resources", "Task"]
__version__ = "0.1.0"

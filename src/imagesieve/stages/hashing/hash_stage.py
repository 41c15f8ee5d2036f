"""ImageHashStage: exact and perceptual hashes of every image of a batch, into `metadata`."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagesieve.images.decode import ImageDecodeError, load_plugins
from imagesieve.matching.hashes import ALL_KINDS, PERCEPTUAL, hash_images
from imagesieve.stages.base import NodeInfo, ProcessingStage, WorkerMetadata
from imagesieve.stages.sample_fields import check_on_error, image_bytes, json_values
from imagesieve.tasks import ImageBatch, ImageObject

CHUNK = 256  # images read and hashed together


@dataclass
class ImageHashStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Adds `width`, `height`, `format`, `file_size` and one entry per hash kind to each image's
    `metadata`. A corrupt image fails the run (`on_error="fail"`) or is kept with its `error`
    recorded (`on_error="skip"`), never dropped silently. `json_fields` copies fields of the
    sample's `.json` member (e.g. a quality score for the keep policy)."""

    kinds: tuple[str, ...] = ("bytes_hash", "phash")
    flip: bool = False
    exact_decode: bool = False
    on_error: str = "fail"
    json_fields: tuple[str, ...] = ()
    name: str = "image_hash"
    _checked: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in ALL_KINDS]
        if unknown:
            raise ValueError(f"unknown hash kinds {unknown}; choose from {list(ALL_KINDS)}")
        check_on_error(self.on_error)

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["image_id", "members"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["metadata", *self.kinds]

    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        """Load every Pillow image plugin once here: on the local executor this runs before the workers
        fork, so they inherit them instead of each loading them on its first WebP or TIFF."""
        load_plugins()

    def process(self, task: ImageBatch) -> ImageBatch:
        for start in range(0, len(task.data), CHUNK):  # bounded memory: a shard can be gigabytes
            self._hash_chunk(task.data[start:start + CHUNK])
        return task

    def _hash_chunk(self, images: list[ImageObject]) -> None:
        datas = image_bytes(images)
        wheres = [f"{image.shard}: sample {image.image_id!r}" for image in images]
        results = hash_images(datas, self.kinds, wheres, self.flip, self.exact_decode)
        for image, data, where, result in zip(images, datas, wheres, results, strict=True):
            image.metadata["file_size"] = len(data)
            if isinstance(result, ImageDecodeError):
                if self.on_error == "fail":
                    raise result
                # keep every column present even when no image of the shard could be read
                image.metadata.update(dict.fromkeys(self._columns(), None), error=str(result))
                continue
            image.metadata.update(width=result.width, height=result.height, format=result.format,
                                  **result.values)
            if self.json_fields:
                image.metadata.update(json_values(image, self.json_fields, where))

    def _columns(self) -> list[str]:
        flips = [f"{k}_flip" for k in self.kinds if self.flip and k in PERCEPTUAL]
        return ["width", "height", "format", *self.kinds, *flips, *(f"json.{f}" for f in self.json_fields)]

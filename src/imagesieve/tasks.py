"""Tasks: the units of work that flow between stages (same names and meaning as NeMo Curator's).

A sample's members are held as `MemberRef`s: the shard path plus the byte range of the member
inside the tar. Stages that only need IDs (removal) never read image bytes, stages that need
pixels ask for them (`ImageObject.read_bytes`, `decode`), and tasks stay small to send between
processes or Ray workers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(slots=True)
class MemberRef:
    """One tar member of a sample: where its bytes lie, and its original header fields."""

    name: str  # member name inside the tar, e.g. "00000123.jpg"
    shard: str  # path of the tar file
    offset: int  # byte offset of the member's data in the tar
    size: int
    mtime: int = 0  # header fields, used when the member is written from `data`
    mode: int = 0o644
    header_offset: int = -1  # start of the member's headers in the tar, so they can be copied verbatim
    data: bytes | None = None  # set when the bytes are not in a seekable file (compressed tars)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            content = f.read(self.size)
        if len(content) != self.size:
            raise ValueError(f"{self.shard}: member {self.name!r} is truncated")
        return content


@dataclass
class Task(ABC, Generic[T]):
    """A batch of data moving through a pipeline."""

    dataset_name: str
    data: T
    _stage_perf: list[Any] = field(default_factory=list)
    _metadata: dict[str, Any] = field(default_factory=dict)
    task_id: str = ""

    def __post_init__(self) -> None:
        self.validate()

    @property
    @abstractmethod
    def num_items(self) -> int:
        """Number of items (files, images) in this task."""

    def validate(self) -> bool:
        return True

    def with_data(self, data: T, **metadata: Any) -> Task[T]:
        """A copy of this task carrying `data` and extra metadata; the one way stages derive tasks."""
        return replace(self, data=data, _metadata={**self._metadata, **metadata})


@dataclass
class ImageObject:
    """One image sample. The first seven fields are the reference's; the rest carry pass-through."""

    image_path: str = ""
    image_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    image_data: np.ndarray | None = None
    embedding: np.ndarray | None = None
    aesthetic_score: float | None = None
    nsfw_score: float | None = None
    # pass-through: every member of the sample by extension ("jpg", "txt", "json", ...), in tar order
    members: dict[str, MemberRef] = field(default_factory=dict)
    shard: str = ""
    image_ext: str = ""

    def read_bytes(self, ext: str | None = None) -> bytes:
        """The encoded bytes of the image member (or of another member, by extension)."""
        return self.members[ext or self.image_ext].read()

    def decode(self) -> np.ndarray:
        """Decode the image to an RGB array (cached in `image_data`)."""
        if self.image_data is None:
            from imagesieve.imageio import decode_rgb

            self.image_data = decode_rgb(self.read_bytes(), where=f"{self.shard}: sample {self.image_id!r}")
        return self.image_data


@dataclass
class ImageBatch(Task[list[ImageObject]]):
    """A list of images, usually the samples of one shard, in shard order."""

    data: list[ImageObject] = field(default_factory=list)

    @property
    def num_items(self) -> int:
        return len(self.data)


@dataclass
class FileGroupTask(Task[list[str]]):
    """A group of files to read (shards, Parquet files)."""

    data: list[str] = field(default_factory=list)
    reader_config: dict[str, Any] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.data)

    def validate(self) -> bool:
        if not isinstance(self.data, list):
            raise TypeError(f"FileGroupTask.data must be a list of paths, got {type(self.data).__name__}")
        return True


@dataclass
class EmptyTask(Task[None]):
    """The input of a source stage, which makes its own tasks."""

    dataset_name: str = "empty"
    data: None = None

    @property
    def num_items(self) -> int:
        return 0

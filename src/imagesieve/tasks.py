"""Tasks: the units of work that flow between stages (same names and meaning as NeMo Curator's).

A sample's members are held as `MemberRef`s: the shard path plus the byte range of the member
inside the tar. Stages that only need IDs (removal) never read image bytes, stages that need
pixels ask for them (`ImageObject.read_bytes`, `decode`), and tasks stay small to send between
processes or Ray workers.
"""

from __future__ import annotations

import gc
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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
    # an object's shard: its URL and version, for a process where `shard` (a spool path) does not exist
    source: Any = field(default=None, compare=False, repr=False)

    def local_path(self) -> str:
        """A local file holding the member's bytes in this process (`shard`, or a copy of the object)."""
        return self.shard if self.source is None else self.source.path()

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.local_path(), "rb") as f:
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
    """One image sample. The first seven fields are the reference's; the rest carry pass-through.

    `image_data` is decoded from the image member on first access and cached, so stages written
    for the reference read it directly while stages that never touch it (removal) never decode.
    It stays settable; a decoded-on-demand array is not sent between processes (it is re-decoded).
    """

    image_path: str = ""
    image_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    image_data: np.ndarray | None = field(default=None, repr=False, compare=False)
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
        data = self.image_data
        if data is None:
            raise ValueError(f"{self.shard}: sample {self.image_id!r} has no image member to decode")
        return data

    @property
    def is_decoded(self) -> bool:
        """Whether `image_data` holds an array now (without decoding)."""
        return self.__dict__.get("_image_data") is not None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if state.pop("_lazy", False):
            state["_image_data"] = None  # re-decoded on demand where it is needed
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def _get_image_data(self: ImageObject) -> np.ndarray | None:
    data = self.__dict__.get("_image_data")
    if data is None and self.image_ext in self.members:
        from imagesieve.images.decode import decode_rgb

        data = decode_rgb(self.read_bytes(), where=f"{self.shard}: sample {self.image_id!r}")
        self.__dict__.update(_image_data=data, _lazy=True)
    return data


def _set_image_data(self: ImageObject, value: np.ndarray | None) -> None:
    self.__dict__.update(_image_data=value, _lazy=False)


ImageObject.image_data = property(_get_image_data, _set_image_data)  # type: ignore[assignment]


def _get_members(self: ImageObject) -> dict[str, MemberRef]:
    members = self.__dict__.get("_members")
    if not members and "_source" in self.__dict__:  # made from the reader's shard table on first access
        table, row = self.__dict__["_source"]
        members = table.members(row)
        self.__dict__.update(_members=members, _members_made=_member_fields(members))
    return members


def _member_fields(members: dict[str, MemberRef]) -> list[tuple]:
    """What the members are, field by field: a stage that edits a `MemberRef` in place changes this."""
    return [(ext, ref.name, ref.shard, ref.offset, ref.size, ref.header_offset, ref.data, ref.mtime, ref.mode)
            for ext, ref in members.items()]


def _set_members(self: ImageObject, value: dict[str, MemberRef]) -> None:
    self.__dict__["_members"] = value


ImageObject.members = property(_get_members, _set_members)  # type: ignore[assignment]


def image_from_table(table: Any, row: int, image_path: str, image_id: str, shard: str, image_ext: str) -> ImageObject:
    """An `ImageObject` as the reader makes one per sample: the dataclass's defaults set directly
    (half the cost of `__init__`, per sample of every shard), and its members made from `table`
    only when a stage asks for them."""
    image = object.__new__(ImageObject)
    image.__dict__.update(image_path=image_path, image_id=image_id, metadata={}, _image_data=None, _lazy=False,
                          embedding=None, aesthetic_score=None, nsfw_score=None, _members={}, shard=shard,
                          image_ext=image_ext, _source=(table, row))
    return image


def table_rows(images: list[ImageObject], table: object) -> list[int] | None:
    """The images' rows in `table` (the reader's `ShardTable`) when every one still has exactly the
    members read from it, so that writers may copy byte ranges straight from the table; else None."""
    rows = []
    for image in images:
        state = image.__dict__
        source = state.get("_source")
        if source is None or source[0] is not table:
            return None
        members = state.get("_members")
        if members and _member_fields(members) != state.get("_members_made"):
            return None  # a stage replaced or changed them
        if state["image_id"] != table.key_array[source[1]].as_py():
            return None  # renamed: the writer says why it cannot be written
        rows.append(source[1])
    return rows

@dataclass(frozen=True, slots=True)
class Removal:
    """One sample taken out of a batch, and why."""

    image_id: str
    shard: str
    reason: str


@dataclass
class Ledger:
    """A batch's accounting: samples that entered the pipeline for it, and those removed since.

    Executors keep `samples_in == len(batch.data) + len(removed)` true after every stage.
    """

    samples_in: int
    removed: list[Removal] = field(default_factory=list)


class AccountingError(RuntimeError):
    """Samples in != kept + removed: something was lost or counted twice."""


def check_accounting(where: str, samples_in: int, kept: int, removed: int) -> None:
    """Raise `AccountingError` unless samples in == kept + removed (the ledger's rule, checked by the
    executors after each stage and by the writers per shard)."""
    if samples_in != kept + removed:
        raise AccountingError(f"{where}: {samples_in} samples in but {kept} kept + {removed} removed "
                              f"= {kept + removed}; refusing to finish")


@dataclass
class ImageBatch(Task[list[ImageObject]]):
    """A list of images, usually the samples of one shard, in shard order.

    The reader makes a batch over its shard table (`from_table`): its `ImageObject`s are made the
    first time a stage reads `data`. Stages that only need IDs (removal) and the writer work on the
    table's rows instead (`lazy_rows`, `image_ids`, `drop_rows`), so a remove pipeline makes no
    Python object per sample; any other stage sees an ordinary list.
    """

    data: list[ImageObject] = field(default_factory=list)
    ledger: Ledger | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ledger is None:
            self.ledger = Ledger(samples_in=len(self.data))
        super().__post_init__()

    @classmethod
    def from_table(cls, table: Any, dataset_name: str, task_id: str, metadata: dict[str, Any],
                   rows: np.ndarray | None = None) -> ImageBatch:
        """A batch of every sample of `table` (a `ShardTable`; `table.image(row)` makes one image), or
        of its `rows`."""
        rows = np.arange(len(table)) if rows is None else rows
        batch = cls(dataset_name=dataset_name, data=[], task_id=task_id, _metadata=metadata,
                    ledger=Ledger(samples_in=len(rows)))
        batch.__dict__.update(_data=None, _rows=rows, _table=table)
        return batch

    @property
    def lazy_rows(self) -> np.ndarray | None:
        """The table rows of the images while no stage has asked for `data`; else None."""
        return self.__dict__.get("_rows") if self.__dict__.get("_data") is None else None

    @property
    def lazy_table(self) -> Any:
        """The reader's `ShardTable` under `lazy_rows` while no stage has asked for `data`; else None."""
        return self.__dict__["_table"] if self.lazy_rows is not None else None

    def image_ids(self) -> list[str]:
        rows = self.lazy_rows
        if rows is None:
            return [image.image_id for image in self.data]
        return self.__dict__["_table"].keys_of(rows)

    def image_keys(self) -> list[tuple[str, str]]:
        """(shard, image_id) of each image: what accounting follows an image by."""
        if self.lazy_rows is None:
            return [(image.shard, image.image_id) for image in self.data]
        shard = self.__dict__["_table"].display_shard
        return [(shard, image_id) for image_id in self.image_ids()]

    @property
    def num_items(self) -> int:
        rows = self.lazy_rows
        return len(self.data) if rows is None else len(rows)

    @property
    def removed(self) -> list[Removal]:
        """Every sample removed from this batch so far, with its reason."""
        return self.ledger.removed

    @property
    def samples_in(self) -> int:
        return self.ledger.samples_in

    def drop(self, images: Iterable[ImageObject], reason: str) -> ImageBatch:
        """Take `images` out of `data` and record why; returns this batch. The typed way to remove."""
        gone = {id(image): image for image in images}
        if not gone:
            return self
        self.data = [image for image in self.data if id(image) not in gone]
        self.ledger.removed.extend(Removal(image.image_id, image.shard, reason) for image in gone.values())
        return self

    def drop_rows(self, mask: np.ndarray, reason: str) -> ImageBatch:
        """`drop` for a batch still over its table: take out the images where `mask` is True."""
        rows, table = self.lazy_rows, self.__dict__["_table"]
        if rows is None:
            raise ValueError("drop_rows: this batch's images are already made; use drop()")
        self.ledger.removed.extend(Removal(key, table.display_shard, reason) for key in table.keys_of(rows[mask]))
        self.__dict__["_rows"] = rows[~mask]
        return self


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (what is made there forms no cycles); as it was after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _get_batch_data(self: ImageBatch) -> list[ImageObject]:
    data = self.__dict__.get("_data")
    if data is None:
        rows = self.__dict__.get("_rows")
        if rows is None:
            return []
        table = self.__dict__["_table"]
        with gc_paused():  # thousands of new objects that live on: collecting while they are made costs 2/3
            data = [table.image(row) for row in rows.tolist()]
        self.__dict__["_data"] = data
    return data


def _set_batch_data(self: ImageBatch, value: list[ImageObject]) -> None:
    self.__dict__["_data"] = value


ImageBatch.data = property(_get_batch_data, _set_batch_data)  # type: ignore[assignment]


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
class DocumentBatch(Task[Any]):
    """A table of rows (a `pyarrow.Table`, or a pandas DataFrame as Curator's stages make them)."""

    data: Any = None

    @property
    def num_items(self) -> int:
        return 0 if self.data is None else len(self.data)

    def to_pyarrow(self) -> Any:
        import pyarrow as pa

        return self.data if isinstance(self.data, pa.Table) else pa.Table.from_pandas(self.data, preserve_index=False)

    def to_pandas(self) -> Any:
        return self.data.to_pandas() if hasattr(self.data, "to_pandas") else self.data


@dataclass
class EmptyTask(Task[None]):
    """The input of a source stage, which makes its own tasks."""

    dataset_name: str = "empty"
    data: None = None

    @property
    def num_items(self) -> int:
        return 0

"""ImageDuplicatesRemovalStage: drop every image whose ID is listed in a folder of Parquet files.

Same fields and contract as NeMo Curator's stage of the same name. The difference is memory: the
IDs live in a memory-mapped `IdIndex` built once per node (in `setup_on_node`, or by the first
worker that needs it), not in a Python set per worker. Removed images are never decoded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from imagesieve.matching.id_cache import build_shared_index
from imagesieve.matching.id_index import IdIndex
from imagesieve.stages.base import NodeInfo, ProcessingStage, WorkerMetadata
from imagesieve.stages.deduplication.curator_ids import CURATOR_ID, CuratorIds, looks_like_curator
from imagesieve.storage import storage_for
from imagesieve.tasks import ImageBatch

logger = logging.getLogger(__name__)

REMOVAL_REASON = "listed as duplicate"
ID_SCHEMES = ("auto", "key", "curator")


def _is_parquet(name: str) -> bool:
    return name.endswith(".parquet")


_NOTES_SAID: set[str] = set()


@dataclass
class ImageDuplicatesRemovalStage(ProcessingStage[ImageBatch, ImageBatch]):
    """Removes images whose `image_id` appears in the `duplicate_id_field` column of any
    `*.parquet` file under `removal_parquets_dir` (searched recursively).

    Beyond the reference's fields: `cache_dir` holds the built ID index between runs (default
    `~/.cache/imagesieve`, private to the user); `check_id_folder=False` accepts a folder that looks
    like a `find` output root, a groups table or a hash table (refused by default: those list images
    that must stay). An ID folder on object storage (`s3://...`, with `storage_options`) is downloaded
    into a private spool folder to build the index, then deleted.

    `id_scheme` says what the IDs name: "key" the WebDataset key; "curator" NeMo Curator's reader IDs
    (`{tar stem}_{index:06d}`, mapped by shard and position: see `curator_ids`); "auto" a shard's
    samples by key, and by Curator position when none of its keys is listed but the list is shaped
    as Curator's (the `remove` workflow decides once for the whole run instead).

    A list that names no sample of the input is not refused here: the stage sees one batch at a
    time, and a batch with nothing listed is normal. The `remove` workflow checks the whole input
    before it writes anything (`workflows.id_lists.check_ids_match`); a pipeline of your own can
    compare the removed count with what it expected.
    """

    removal_parquets_dir: str
    duplicate_id_field: str = "id"
    verbose: bool = False
    num_workers_per_node: int | None = None
    name: str = "image_dedup_filter"
    cache_dir: str | None = None
    check_id_folder: bool = True
    storage_options: dict | None = field(default=None, repr=False)
    id_scheme: str = "auto"
    _index: IdIndex | None = field(default=None, init=False, repr=False)
    _curator: CuratorIds | None = field(default=None, init=False, repr=False)
    _index_dir: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.id_scheme not in ID_SCHEMES:
            raise ValueError(f"id_scheme={self.id_scheme!r}: expected one of {', '.join(ID_SCHEMES)}")

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], ["image_id"]

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def setup_on_node(self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None) -> None:
        self._index_dir = self._build_index()
        self._log_notes(IdIndex.load(self._index_dir).notes)

    @staticmethod
    def _log_notes(notes: list[str]) -> None:
        """What was converted while reading the IDs: said once per node, not once per worker or call."""
        for note in notes:
            if note not in _NOTES_SAID:
                _NOTES_SAID.add(note)
                logger.warning(note)

    def _build_index(self) -> str:
        folder = self.removal_parquets_dir  # on object storage: its Parquet files copied to a local folder
        with storage_for(folder, self.storage_options).local_tree(folder, _is_parquet) as local:
            return self._build_local_index(local)

    def _build_local_index(self, folder: str) -> str:
        return build_shared_index(folder, self.duplicate_id_field, self.cache_dir, check_folder=self.check_id_folder)

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        located_here = self._index_dir is None or not IdIndex.files_complete(self._index_dir)
        if located_here:  # setup_on_node did not run here (another node's path, or a direct call)
            self._index_dir = self._build_index()
        self._index = IdIndex.load(self._index_dir)
        if located_here:
            self._log_notes(self._index.notes)
        curator = self.id_scheme == "curator" or (self.id_scheme == "auto" and looks_like_curator(self._index))
        self._curator = CuratorIds(self._index, self.storage_options) if curator else None
        if self.verbose:
            logger.info("Loaded %d IDs to remove from %r", len(self._index), self.removal_parquets_dir)

    def use_id_scheme(self, scheme: str) -> None:
        """Fix what the IDs name ("key" or "curator") once it is decided for a whole run (`remove`)."""
        self.id_scheme = scheme
        if scheme == "key":
            self._curator = None
        elif self._curator is None and self._index is not None:
            self._curator = CuratorIds(self._index, self.storage_options)

    def __getstate__(self) -> dict:
        # workers map the index themselves; never ship the mapped arrays between processes
        return {**self.__dict__, "_index": None, "_curator": None}

    @property
    def listed_ids(self) -> int:
        """How many distinct IDs the folder lists."""
        if self._index is None:
            self.setup()
        return len(self._index)

    @property
    def ids_digest(self) -> str:
        """A digest of the ID files' content: equal for equal IDs, whatever their names or mtimes."""
        return os.path.basename(self._index_dir or self._build_index())

    @property
    def notes(self) -> list[str]:
        """What was converted while reading the IDs (integer IDs to strings)."""
        if self._index is None:
            self.setup()
        return self._index.notes

    def process(self, task: ImageBatch) -> ImageBatch:
        if self._index is None:
            self.setup()
        rows = task.lazy_rows
        if rows is not None:  # straight from the reader: no image objects made, keys hashed as read
            table = task.lazy_table
            if self.id_scheme == "curator":
                listed = np.isin(rows, self._curator.listed_rows(table))
            else:
                listed = self._index.contains_hashed(table.key_hashes[rows], table.key_array.take(pa.array(rows)))
                if self._curator is not None and not listed.any():
                    listed = self._by_curator_position(table, rows)
            task.drop_rows(listed, REMOVAL_REASON)
        else:
            images = task.data
            if self.id_scheme == "curator":
                listed = self._curator_listed(task, images)
            else:
                listed = self._index.contains(task.image_ids())
                if self._curator is not None and not listed.any() and images:
                    listed = self._curator_listed(task, images, guessed=True)
            task.drop([image for image, drop in zip(images, listed, strict=True) if drop], REMOVAL_REASON)
        task.task_id = f"{task.task_id}_{self.name}"  # as the reference names its output batch
        if self.verbose:
            logger.info("Dedup filtering: kept %d/%d images, removed %d by ID",
                        task.num_items, len(listed), len(listed) - task.num_items)
        return task

    def _by_curator_position(self, table: object, rows: np.ndarray) -> np.ndarray:
        """"auto", none of the shard's keys listed: the samples its Curator IDs name (said once). Refused
        when the shard's own keys are shaped as Curator IDs: then the listed IDs may be keys of another
        shard (or keys removed since), and read as positions they would remove samples nobody listed."""
        listed = np.isin(rows, self._curator.listed_rows(table))
        keys = table.key_array.slice(0, 3).to_pylist()
        if listed.any() and keys and any(CURATOR_ID.match(key) for key in keys):
            raise ValueError(f"{table.display_shard}: none of its keys (such as {keys[0]!r}, shaped as a NeMo Curator "
                             f"reader ID) is listed in {self.removal_parquets_dir}, whose IDs are shaped so too: "
                             "whether they are keys or positions is unclear, and read as positions they would "
                             "remove samples nobody listed; pass id_scheme='key' or id_scheme='curator'")
        if listed.any():
            self._log_notes([f"the IDs in {self.removal_parquets_dir} are NeMo Curator reader IDs "
                             "({tar stem}_{index:06d}), not sample keys: mapped to samples by shard and position"])
        return listed

    def _curator_listed(self, task: ImageBatch, images: list, guessed: bool = False) -> np.ndarray:
        """Which of `images` (made from the reader's shard table) the Curator IDs name."""
        table = task._metadata.get("shard_table")
        if table is None:
            if guessed:
                return np.zeros(len(images), bool)
            raise ValueError(f"{task.task_id}: Curator IDs name samples of tar shards by position, but this batch "
                             "was not read from a tar shard; use id_scheme='key'")
        sources = [image.__dict__.get("_source") or (None, -1) for image in images]
        rows = np.array([row if source is table else -1 for source, row in sources], np.int64)
        listed = self._by_curator_position(table, rows) if guessed else np.isin(rows, self._curator.listed_rows(table))
        return listed & (rows >= 0)

"""NeMo Curator's reader IDs, `{tar stem}_{index:06d}`, mapped to the samples they name.

Curator's `ImageReaderStage` (DALI) reads only the `.jpg` member of each sample, skips samples
without one, and numbers the rest from 0 in tar order, per task. A task of several shards
(`FilePartitioningStage(files_per_partition=N)`: consecutive shards in path order) is named
`group_{first stem}_x{count}` and numbered across its shards. Such an ID names a sample by position,
so it is right only for the shards Curator read, unchanged and grouped alike.

Removal translates once per shard: it makes the IDs Curator gave the shard's samples and looks them
up in the ID index. The key lookup, the fast path, is not touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.matching.id_index import IdIndex
from imagesieve.storage import parent, storage_for
from imagesieve.tar.read import ShardReader, read_table
from imagesieve.tar.table import ShardTable

CURATOR_ID = re.compile(r"^(.+)_(\d{6,})$")
_PREFIX_PATTERN = r"^(?P<prefix>.+)_\d{6,}$"
_GROUP = re.compile(r"^group_(.+)_x([1-9]\d*)$")
SAMPLED = 1000  # IDs looked at to tell a Curator list from a list of keys
_CHUNK = 1 << 20  # IDs per step when every prefix of the list is collected


def stem(shard: str) -> str:
    """The shard's name as Curator's reader takes it (`pathlib`'s stem: `00000.tar` -> `00000`)."""
    return PurePosixPath(shard.rstrip("/")).stem


def looks_like_curator(index: IdIndex) -> bool:
    """Whether the listed IDs are shaped as Curator's reader makes them (judged on a spread sample)."""
    sample = index.ids(0, SAMPLED).to_pylist()
    return bool(sample) and all(CURATOR_ID.match(i) for i in sample)


def examples(index: IdIndex, count: int = 3) -> list[str]:
    """A few listed IDs, for messages."""
    return index.ids(0, count).to_pylist()


def jpg_numbers(table: ShardTable) -> np.ndarray:
    """Per sample of `table`, the number Curator's reader gives it: how many earlier samples have a
    member whose extension is exactly `jpg` (DALI's `ext=["jpg"]`), or -1 for a sample without one."""
    names = table.name_array
    sample_of = table.sample_of
    is_jpg = pc.ends_with(names, ".jpg").to_numpy(zero_copy_only=False) & (sample_of >= 0)
    candidates = np.flatnonzero(is_jpg)
    if len(candidates):
        name_length = pc.binary_length(names.take(pa.array(candidates))).to_numpy(zero_copy_only=False)
        key_length = pc.binary_length(table.key_array.take(pa.array(sample_of[candidates]))).to_numpy(
            zero_copy_only=False)
        is_jpg[candidates] = name_length == key_length + 4  # `KEY.jpg`, not `KEY.seg.jpg`
    has_jpg = np.zeros(len(table), bool)
    has_jpg[sample_of[is_jpg]] = True
    return np.where(has_jpg, np.cumsum(has_jpg) - 1, -1)


@dataclass
class CuratorIds:
    """The Curator IDs of a list, for mapping shards' samples to them."""

    index: IdIndex
    storage_options: dict | None = None
    _prefixes: set[str] | None = field(default=None, repr=False)
    _jpg_counts: dict[str, int] = field(default_factory=dict, repr=False)  # shard -> samples Curator reads
    _reader: ShardReader = field(default_factory=ShardReader, repr=False)
    _folders: dict[str, tuple] = field(default_factory=dict, repr=False)  # folder -> `_folder`

    @property
    def prefixes(self) -> set[str]:
        """Every ID prefix the list names: shard stems and `group_{stem}_x{count}` (read once, in chunks)."""
        if self._prefixes is None:
            found: set[str] = set()
            for start in range(0, len(self.index), _CHUNK):
                parts = pc.extract_regex(self.index.ids(start, start + _CHUNK), _PREFIX_PATTERN)
                found.update(p for p in pc.unique(parts.field("prefix")).to_pylist() if p is not None)
            self._prefixes = found
        return self._prefixes

    def names_shard(self, shard: str) -> bool:
        """Whether the list names samples of `shard` (alone or in a group)."""
        return stem(shard) in self.prefixes or bool(self._groups_of(shard))

    def first_id(self, shard: str) -> str | None:
        """A listed ID that names `shard` (alone or in a group), for messages."""
        prefixes = [p for p in (stem(shard), *(g for g, _ in self._groups_of(shard))) if p in self.prefixes]
        for start in range(0, len(self.index), _CHUNK):
            ids = self.index.ids(start, start + _CHUNK)
            for prefix in prefixes:
                found = ids.filter(pc.match_substring_regex(ids, f"^{re.escape(prefix)}_\\d{{6,}}$"))
                if len(found):
                    return found[0].as_py()
        return None

    def listed_rows(self, table: ShardTable) -> np.ndarray:
        """The rows of `table` whose Curator ID (alone, or in any listed group) is in the list."""
        shard = table.display_shard
        numbers = jpg_numbers(table)
        read = np.flatnonzero(numbers >= 0)
        found = np.zeros(len(read), bool)
        for prefix, first in [(stem(shard), 0), *self._groups_of(shard)]:
            if prefix in self.prefixes:
                ids = [f"{prefix}_{n:06d}" for n in (numbers[read] + first).tolist()]
                found |= self.index.contains(ids)
        return read[found]

    def _groups_of(self, shard: str) -> list[tuple[str, int]]:
        """(prefix, first number) of each listed group that holds `shard`: the group is `count` shards
        from its first, in path order among the shard's folder's files of its suffix."""
        groups = [(p, m.group(1), int(m.group(2))) for p in self.prefixes if (m := _GROUP.match(p))]
        if not groups:
            return []
        files, at_path, at_stem = self._folder(shard)
        at = at_path.get(shard)
        found = []
        for prefix, first, count in groups:
            start = at_stem.get(first)
            if at is not None and start is not None and start <= at < start + count:
                found.append((prefix, sum(self._jpg_count(s) for s in files[start:at])))
        return found

    def _folder(self, shard: str) -> tuple[list[str], dict[str, int], dict[str, int]]:
        """The shard's folder's files of its suffix, sorted, with each one's place by path and by stem
        (listed once per folder)."""
        suffix = PurePosixPath(shard).suffix
        folder = parent(shard)
        if folder not in self._folders:
            listed = storage_for(shard, self.storage_options).list_folder(folder)
            files = sorted(f for f in listed if f.endswith(suffix))
            self._folders[folder] = _places(files)
        return self._folders[folder]

    def _jpg_count(self, shard: str) -> int:
        if shard not in self._jpg_counts:
            with storage_for(shard, self.storage_options).local_copy(shard) as local:
                numbers = jpg_numbers(read_table(local, self._reader))
            self._jpg_counts[shard] = int(numbers.max()) + 1 if len(numbers) else 0
        return self._jpg_counts[shard]


def _places(files: list[str]) -> tuple[list[str], dict[str, int], dict[str, int]]:
    return files, {p: i for i, p in enumerate(files)}, {stem(p): i for i, p in enumerate(files)}

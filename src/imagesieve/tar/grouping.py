"""Members into samples one member at a time: the exact path, which names what repeats when something does.

It groups a table read without numba, and a shard where the compiled pass (`grouping_kernel`) met a key
or a member twice.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from imagesieve.tar.names import ShardError, image_rank, split_key


class Grouping(NamedTuple):
    sample_of: np.ndarray  # int32 per member: its sample, or -1
    keys: pa.LargeStringArray  # per sample
    key_hashes: np.ndarray | None  # uint64 per sample: xxh64 of the key (what the ID index looks up), if made
    image_member: np.ndarray  # int64 per sample: the member holding its image (`names.image_rank`), or -1
    suspicious: np.ndarray  # bool per member: a name `check_member_name` must look at


def group_from_keys(names: list[str], sample_of: np.ndarray, keys: list[str], names_checked: bool) -> Grouping:
    """A `Grouping` from the one-by-one path's result: a table read without numba, or a shard where
    something repeats. With `names_checked`, every name already passed `check_member_name`."""
    image_member = np.full(len(keys), -1, np.int64)
    best = [1 << 30] * len(keys)  # each sample's image rank so far (`names.image_rank`: lower wins)
    for j, (name, sample) in enumerate(zip(names, sample_of.tolist(), strict=True)):
        if sample >= 0 and best[sample] > 0:
            rank = image_rank(name[len(keys[sample]) + 1:])
            if rank is not None and rank < best[sample]:
                best[sample] = rank
                image_member[sample] = j
    return Grouping(sample_of, pa.array(keys, pa.large_string()), None, image_member,
                    np.full(len(names), not names_checked))


def _group_members_one_by_one(shard: str, names: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Which sample each member belongs to (-1: none), the samples' keys and each member's extension,
    one member at a time: raises naming the key or member that repeats."""
    sample_of = np.empty(len(names), np.int32)
    keys: list[str] = []
    exts: list[str] = []
    seen: set[str] = set()
    current, current_exts = None, set()
    for j, name in enumerate(names):
        parts = split_key(name)
        if parts is None:
            sample_of[j] = -1
            exts.append("")
            continue
        key, ext = parts
        exts.append(ext)
        if key != current:
            if key in seen:
                raise ShardError(f"{shard}: key {key!r} appears twice in the shard (members not adjacent)")
            seen.add(key)
            keys.append(key)
            current, current_exts = key, set()
        elif ext in current_exts:
            raise ShardError(f"{shard}: sample {key!r} has two {ext!r} members")
        current_exts.add(ext)
        sample_of[j] = len(keys) - 1
    return sample_of, keys, exts

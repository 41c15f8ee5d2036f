"""Keep policies: which member of a duplicate group stays. Each gives every image a rank; lowest wins.

Ties always fall back to the order in which images were first seen (shard order, then position),
so results never depend on hashing order or worker count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class KeepPolicy:
    """Ranks images by a column of the hash table (`column`), largest first, then first seen."""

    name: str
    column: str | None = None

    def rank(self, table: pa.Table) -> np.ndarray:
        """rank[i] = position of image i in keep preference (0 = keep first)."""
        seen = np.arange(table.num_rows)
        if self.column is None:
            return seen
        if self.column not in table.column_names:
            raise ValueError(f"keep policy {self.name!r} needs column {self.column!r}, which the hashes do not have")
        values = table.column(self.column).to_numpy(zero_copy_only=False)
        values = np.where(np.isnan(values.astype(float)), -np.inf, values.astype(float))  # missing ranks last
        order = np.lexsort((seen, -values))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = seen
        return rank


def keep_policy(spec: str) -> KeepPolicy:
    """'first' | 'resolution' | 'file-size' | 'column:NAME' (a field of the sample's .json, larger kept)."""
    if spec == "first":
        return KeepPolicy("first")
    if spec == "resolution":
        return KeepPolicy("resolution", "pixels")
    if spec == "file-size":
        return KeepPolicy("file-size", "file_size")
    if spec.startswith("column:") and len(spec) > len("column:"):
        return KeepPolicy(spec, f"json.{spec.split(':', 1)[1]}")
    raise ValueError(f"unknown keep policy {spec!r}: use first, resolution, file-size or column:NAME")

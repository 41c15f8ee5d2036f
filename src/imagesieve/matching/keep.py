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
        values = self._values(table)
        values = np.where(np.isnan(values), -np.inf, values)  # missing ranks last
        order = np.lexsort((seen, -values))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = seen
        return rank


    def _values(self, table: pa.Table) -> np.ndarray:
        """The ranking column as floats, refusing a column that is absent, empty or not numeric."""
        field = self.column.removeprefix("json.")
        if self.column not in table.column_names or table.column(self.column).null_count == table.num_rows:
            raise ValueError(f"keep policy {self.name!r}: no sample has a value for {field!r}"
                             + (" in its .json" if self.column.startswith("json.") else ""))
        column = table.column(self.column)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type) or pa.types.is_null(column.type)):
            example = next(v for v in column.to_pylist() if v is not None)
            raise ValueError(f"keep policy {self.name!r}: {field!r} must be a number, but holds {example!r} "
                             f"({column.type})")
        return column.to_numpy(zero_copy_only=False).astype(float)


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

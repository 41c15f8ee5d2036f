"""Keep policies: which member of a duplicate group stays. Each gives every image a rank; lowest wins.

Ties always fall back to the order in which images were first seen (shard order, then position),
so results never depend on hashing order or worker count. The semantic finder also takes NeMo
Curator's policies (`CENTROID_POLICIES`), which rank by each image's k-means centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Curator's: "hard" keeps the member farthest from its centroid (ties: the larger ID), "easy" the nearest
# (ties: the smaller ID), "random" one in a seeded permutation
CENTROID_POLICIES = ("hard", "easy", "random")
CENTROID_SIMILARITY = "centroid_similarity"  # the column "hard" and "easy" rank by, beside `id`


@dataclass(frozen=True)
class KeepPolicy:
    """Ranks images by a column of the hash table (`column`), largest first, then first seen; or by
    a Curator policy (`CENTROID_POLICIES`; "random" seeded by `seed`)."""

    name: str
    column: str | None = None
    seed: int = 42

    @property
    def reads(self) -> list[str]:
        """The columns `rank` reads from a table that may lack `pixels` and the `json.` prefix (embeddings)."""
        if self.column is None:
            return []
        return {"pixels": ["width", "height"], "file_size": ["file_size"]}.get(
            self.column, [self.column, self.column.removeprefix("json.")])

    def rank(self, table: pa.Table) -> np.ndarray:
        """rank[i] = position of image i in keep preference (0 = keep first)."""
        seen = np.arange(table.num_rows)
        if self.name == "random":
            order = np.random.default_rng(self.seed).permutation(table.num_rows)
        elif self.name in ("hard", "easy"):
            ids = np.asarray(table.column("id").to_numpy(zero_copy_only=False))
            id_rank = np.empty(len(ids), dtype=np.int64)
            id_rank[np.argsort(ids, kind="stable")] = seen
            sim = table.column(CENTROID_SIMILARITY).to_numpy().astype(np.float64)
            order = np.lexsort((-id_rank, sim)) if self.name == "hard" else np.lexsort((id_rank, -sim))
        elif self.column is None:
            return seen
        else:
            values = self._values(table)
            order = np.lexsort((seen, -np.where(np.isnan(values), -np.inf, values)))  # missing ranks last
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = seen
        return rank

    def _values(self, table: pa.Table) -> np.ndarray:
        """The ranking column as floats, refusing a column that is absent, empty or not numeric. `pixels`
        is width times height, `json.NAME` may be a bare NAME (precomputed embeddings carry either)."""
        names, name = table.column_names, self.column
        if name == "pixels" and name not in names:
            if "width" not in names:
                raise ValueError(f"keep policy {self.name!r} needs width and height columns in the embeddings "
                                 "(imagesieve writes them; precomputed embeddings may lack them)")
            table = table.append_column(name, pc.multiply(table.column("width").cast(pa.int64()),
                                                          table.column("height").cast(pa.int64())))
        elif name.startswith("json.") and name not in names and name.removeprefix("json.") in names:
            name = name.removeprefix("json.")
        field = self.column.removeprefix("json.")
        if name not in table.column_names or table.column(name).null_count == table.num_rows:
            raise ValueError(f"keep policy {self.name!r}: no sample has a value for {field!r}"
                             + (" in its .json" if self.column.startswith("json.") else ""))
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type) or pa.types.is_null(column.type)):
            example = next(v for v in column.to_pylist() if v is not None)
            raise ValueError(f"keep policy {self.name!r}: {field!r} must be a number, but holds {example!r} "
                             f"({column.type})")
        return column.to_numpy(zero_copy_only=False).astype(float)


def keep_policy(spec: str, centroids: bool = False, seed: int = 42) -> KeepPolicy:
    """'first' | 'resolution' | 'file-size' | 'column:NAME' (a field of the sample's .json, larger kept);
    with `centroids` (the semantic finder) also Curator's 'hard' | 'easy' | 'random'."""
    if spec == "first":
        return KeepPolicy("first")
    if spec == "resolution":
        return KeepPolicy("resolution", "pixels")
    if spec == "file-size":
        return KeepPolicy("file-size", "file_size")
    if spec.startswith("column:") and len(spec) > len("column:"):
        return KeepPolicy(spec, f"json.{spec.split(':', 1)[1]}")
    if centroids and spec in CENTROID_POLICIES:
        return KeepPolicy(spec, seed=seed)
    raise ValueError(f"unknown keep policy {spec!r}: use first, resolution, file-size or column:NAME"
                     + (", or hard, easy or random" if centroids else ""))

"""Reading embedding Parquet files (ours, Curator's, anyone's) into one memory-mapped float32 file,
checking every row: one dimension throughout, no NaN, no zero vector, no repeated ID."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagesieve.runfolder import parquet_files

READ_BATCH = 1 << 15


class EmbeddingsError(ValueError):
    """Bad embeddings input; the message names the file and row."""


@dataclass
class LoadedEmbeddings:
    path: str  # the float32 memmap, rows in input order, unit length
    n: int
    dim: int
    ids: pa.Array
    columns: pa.Table  # the requested extra columns, row for row
    where: list[tuple[str, int]]  # (file, first row index) per file, to name the file of a row
    skipped: pa.Table  # id, reason: rows that carry an `error` instead of an embedding (unreadable images)

    def open(self) -> np.memmap:
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.n, self.dim))

    def locate(self, row: int) -> str:
        files = [start for _, start in self.where]
        k = int(np.searchsorted(files, row, side="right")) - 1
        return f"{self.where[k][0]} row {row - self.where[k][1]}"


def list_parquet(paths: str | list[str]) -> list[str]:
    """Parquet files of a file, a folder (recursively, hidden files skipped) or a glob, sorted."""
    out = []
    for path in [paths] if isinstance(paths, str) else paths:
        if os.path.isdir(path):
            out.extend(parquet_files(path, skip_prefixes=(".", "_")))
        elif os.path.isfile(path):
            out.append(path)
        else:
            matches = sorted(glob.glob(path))
            if not matches:
                raise FileNotFoundError(f"no embeddings at {path}")
            out.extend(list_parquet(matches))
    if not out:
        raise FileNotFoundError(f"no Parquet files of embeddings in {paths}")
    return out


def load_embeddings(files: list[str], memmap_path: str, id_field: str = "id", embedding_field: str = "embeddings",
                    columns: tuple[str, ...] = ()) -> LoadedEmbeddings:
    """Stream `files` batch by batch into `memmap_path`, normalising each row to unit length."""
    total = 0
    for path in files:
        names = set(pq.read_schema(path).names)
        for name in (id_field, embedding_field):
            if name not in names:
                raise EmbeddingsError(f"{path}: has no column {name!r} (columns: {', '.join(sorted(names))})")
        total += pq.ParquetFile(path).metadata.num_rows
    os.makedirs(os.path.dirname(memmap_path) or ".", exist_ok=True)
    out = None
    dim, n, ids, extras, where, skipped = None, 0, [], [], [], []
    for path in files:
        file = pq.ParquetFile(path)
        present = [c for c in columns if c in file.schema_arrow.names]
        has_error = "error" in file.schema_arrow.names
        read = [id_field, embedding_field, *present, *(["error"] if has_error else [])]
        where.append((path, n))
        row0 = 0
        for batch in file.iter_batches(batch_size=READ_BATCH, columns=list(dict.fromkeys(read))):
            table = pa.Table.from_batches([batch])
            vectors = table.column(embedding_field).combine_chunks()
            missing = pc.is_null(vectors).to_numpy(zero_copy_only=False)
            if missing.any():
                errors = table.column("error") if has_error else pa.nulls(table.num_rows, pa.string())
                unexplained = missing & pc.is_null(errors).to_numpy(zero_copy_only=False)
                if unexplained.any():
                    row = row0 + int(np.flatnonzero(unexplained)[0])
                    raise EmbeddingsError(f"{path} row {row}: embedding is null")
                skipped.append(pa.table({"id": table.column(id_field).filter(pa.array(missing)),
                                         "reason": errors.filter(pa.array(missing))}))
                table = table.filter(pa.array(~missing))
                vectors = table.column(embedding_field).combine_chunks()
            matrix, dim = _matrix(vectors, dim, path, row0, missing)
            if out is None and dim is not None:
                out = np.memmap(memmap_path, dtype=np.float32, mode="w+", shape=(total, dim))
            if len(matrix):
                out[n:n + len(matrix)] = matrix
            n += len(matrix)
            ids.append(table.column(id_field).cast(pa.string()))
            extras.append(table.select(present))
            row0 += batch.num_rows
    if out is None or n == 0:
        raise EmbeddingsError(f"no embeddings in {', '.join(files)}")
    out.flush()
    del out
    id_array = pa.chunked_array(ids or [pa.array([], pa.string())], pa.string()).combine_chunks()
    extra = (pa.concat_tables(extras, promote_options="permissive") if extras else pa.table({}))
    loaded = LoadedEmbeddings(memmap_path, n, dim or 0, id_array, extra, where,
                              pa.concat_tables(skipped) if skipped else pa.table({"id": pa.array([], pa.string()),
                                                                                  "reason": pa.array([], pa.string())}))
    _check_unique(loaded)
    return loaded


def _matrix(vectors: pa.Array, dim: int | None, path: str, row0: int, dropped: np.ndarray
            ) -> tuple[np.ndarray, int]:
    """(n, dim) float32 unit rows of a list column; refuses mixed dimensions, NaN and zero vectors."""
    def row_of(k: int) -> int:  # position in the file, counting rows dropped as unreadable images
        return row0 + int(np.flatnonzero(~dropped)[k])

    if pa.types.is_fixed_size_list(vectors.type):
        lengths = np.full(len(vectors), vectors.type.list_size)
    elif pa.types.is_list(vectors.type) or pa.types.is_large_list(vectors.type):
        lengths = pc.list_value_length(vectors).to_numpy(zero_copy_only=False)
    else:
        raise EmbeddingsError(f"{path}: embeddings column is {vectors.type}, expected a list of floats")
    if len(vectors) == 0:
        return np.zeros((0, dim or 0), np.float32), dim
    expected = dim if dim is not None else int(lengths[0])
    wrong = np.flatnonzero(lengths != expected)
    if len(wrong):
        k = int(wrong[0])
        raise EmbeddingsError(f"{path} row {row_of(k)}: embedding has {int(lengths[k])} values, but the "
                              f"embeddings before it have {expected}")
    values = pc.list_flatten(vectors).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    matrix = values.reshape(len(vectors), expected)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad):
        raise EmbeddingsError(f"{path} row {row_of(int(bad[0]))}: embedding has NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise EmbeddingsError(f"{path} row {row_of(int(zero[0]))}: embedding is all zeros (no direction to compare)")
    return matrix / norms[:, None], expected


def _check_unique(loaded: LoadedEmbeddings) -> None:
    """Removal works by ID: an ID twice would remove both copies or neither. Name the second one."""
    if pc.count_distinct(loaded.ids).as_py() == len(loaded.ids):
        return
    seen: set[str] = set()
    for row, value in enumerate(loaded.ids.to_pylist()):
        if value in seen:
            raise EmbeddingsError(f"{loaded.locate(row)}: ID {value!r} appears a second time; IDs must be unique")
        seen.add(value)

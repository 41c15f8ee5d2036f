"""Reading embeddings into one memory-mapped float32 file, checking every row: one dimension throughout,
no NaN, no zero vector, no repeated ID.

Sources: Parquet files with an ID and a list column (ours, Curator's, anyone's), or the layout that
clip-retrieval writes and LAION publishes: `FOLDER/img_emb/img_emb_N.npy` beside
`FOLDER/metadata/metadata_N.parquet`, row-aligned, the ID in a metadata column (`key` by default).
The .npy files are memory-mapped and copied a batch at a time, so none is ever loaded whole.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagesieve.storage.runfolder import parquet_files

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


@dataclass(frozen=True)
class NpyPart:
    """One part of a clip-retrieval folder: img_emb_N.npy and its row-aligned metadata_N.parquet."""

    npy: str
    parquet: str

    def __str__(self) -> str:
        return self.npy


def clip_retrieval_parts(folder: str) -> list[NpyPart]:
    """The parts of a clip-retrieval / LAION folder, in the order of their number N."""
    found = []
    for path in glob.glob(os.path.join(folder, "img_emb", "*.npy")):
        number = re.search(r"(\d+)\.npy$", path)
        if number is None:
            raise EmbeddingsError(f"{path}: expected img_emb_N.npy (clip-retrieval's names)")
        metadata = os.path.join(folder, "metadata", f"metadata_{number.group(1)}.parquet")
        if not os.path.isfile(metadata):
            raise EmbeddingsError(f"{path}: no {metadata} beside it (the IDs of its rows)")
        found.append((int(number.group(1)), NpyPart(path, metadata)))
    if not found:
        raise FileNotFoundError(f"no embeddings in {os.path.join(folder, 'img_emb')} (expected img_emb_N.npy)")
    return [part for _, part in sorted(found, key=lambda item: item[0])]


def embedding_sources(paths: str | list) -> list[str | NpyPart]:
    """Parquet files (see `list_parquet`), and the parts of any clip-retrieval folder among `paths`."""
    out: list[str | NpyPart] = []
    for path in [paths] if isinstance(paths, str | NpyPart) else paths:
        if isinstance(path, NpyPart):
            out.append(path)
        elif os.path.isdir(os.path.join(path, "img_emb")):
            out.extend(clip_retrieval_parts(path))
        else:
            out.extend(list_parquet(path))
    return out


def default_id_field(sources: list[str | NpyPart]) -> str:
    """clip-retrieval names its ID column `key`; Curator and imagesieve `id`."""
    return "key" if any(isinstance(source, NpyPart) for source in sources) else "id"


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


def load_embeddings(files: list[str | NpyPart], memmap_path: str, id_field: str = "id",
                    embedding_field: str = "embeddings", columns: tuple[str, ...] = ()) -> LoadedEmbeddings:
    """Stream `files` batch by batch into `memmap_path`, normalising each row to unit length."""
    total = sum(_rows(source, id_field, embedding_field) for source in files)
    os.makedirs(os.path.dirname(memmap_path) or ".", exist_ok=True)
    out = None
    dim, n, ids, extras, where, skipped = None, 0, [], [], [], []
    for source in files:
        where.append((str(source), n))
        batches = (_npy_batches(source, id_field, columns) if isinstance(source, NpyPart)
                   else _parquet_batches(source, id_field, embedding_field, columns, skipped))
        for table, matrix, row0, dropped in batches:
            if isinstance(matrix, np.ndarray):
                matrix, dim = _unit_rows(matrix, dim, str(source), row0, dropped)
            else:
                matrix, dim = _matrix(matrix, dim, str(source), row0, dropped)
            if out is None and dim is not None:
                out = np.memmap(memmap_path, dtype=np.float32, mode="w+", shape=(total, dim))
            if len(matrix):
                out[n:n + len(matrix)] = matrix
            n += len(matrix)
            ids.append(table.column(id_field).cast(pa.string()))
            extras.append(table.select([c for c in columns if c in table.column_names]))
    if out is None or n == 0:
        raise EmbeddingsError(f"no embeddings in {', '.join(map(str, files))}")
    out.flush()
    del out
    id_array = pa.chunked_array(ids or [pa.array([], pa.string())], pa.string()).combine_chunks()
    extra = (pa.concat_tables(extras, promote_options="permissive") if extras else pa.table({}))
    loaded = LoadedEmbeddings(memmap_path, n, dim or 0, id_array, extra, where,
                              pa.concat_tables(skipped) if skipped else pa.table({"id": pa.array([], pa.string()),
                                                                                  "reason": pa.array([], pa.string())}))
    _check_unique(loaded)
    return loaded


def parquet_columns(path: str) -> set[str]:
    """The column names of a Parquet file of embeddings; a file that is not one is named in the error
    (pyarrow's own message names no file)."""
    try:
        return set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as exc:
        raise EmbeddingsError(f"{path}: not a readable Parquet file of embeddings ({exc})") from exc


def _rows(source: str | NpyPart, id_field: str, embedding_field: str) -> int:
    """The rows of one source, after checking that it has the columns (and, for .npy, the shape) needed."""
    path = source.parquet if isinstance(source, NpyPart) else source
    names = parquet_columns(path)
    for name in (id_field,) if isinstance(source, NpyPart) else (id_field, embedding_field):
        if name not in names:
            hint = " (name the ID column: id_field / --embeddings-key)" if isinstance(source, NpyPart) else ""
            raise EmbeddingsError(f"{path}: has no column {name!r} (columns: {', '.join(sorted(names))}){hint}")
    rows = pq.ParquetFile(path).metadata.num_rows
    if isinstance(source, NpyPart):
        try:
            shape = np.load(source.npy, mmap_mode="r").shape
        except (ValueError, OSError) as exc:
            raise EmbeddingsError(f"{source.npy}: not a readable .npy array of embeddings ({exc})") from exc
        if len(shape) != 2 or shape[0] != rows:
            raise EmbeddingsError(f"{source.npy}: shape {shape}, expected ({rows}, D): one row for each of the "
                                  f"{rows} rows of {source.parquet}")
    return rows


def _parquet_batches(path: str, id_field: str, embedding_field: str, columns: tuple[str, ...], skipped: list):
    """(table, list array of vectors, first row, rows dropped) per batch; rows with an `error` instead of an
    embedding (unreadable images) go to `skipped`."""
    file = pq.ParquetFile(path)
    present = [c for c in columns if c in file.schema_arrow.names]
    has_error = "error" in file.schema_arrow.names
    read = [id_field, embedding_field, *present, *(["error"] if has_error else [])]
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
        yield table, vectors, row0, missing
        row0 += batch.num_rows


def _npy_batches(part: NpyPart, id_field: str, columns: tuple[str, ...]):
    """(table, float32 rows, first row, no rows dropped) per batch, the .npy memory-mapped."""
    vectors = np.load(part.npy, mmap_mode="r")
    file = pq.ParquetFile(part.parquet)
    present = [c for c in columns if c in file.schema_arrow.names]
    row0 = 0
    for batch in file.iter_batches(batch_size=READ_BATCH, columns=list(dict.fromkeys([id_field, *present]))):
        rows = np.asarray(vectors[row0:row0 + batch.num_rows], dtype=np.float32)
        yield pa.Table.from_batches([batch]), rows, row0, np.zeros(batch.num_rows, dtype=bool)
        row0 += batch.num_rows


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
    return _unit_rows(values.reshape(len(vectors), expected), dim, path, row0, dropped)


def _unit_rows(matrix: np.ndarray, dim: int | None, path: str, row0: int, dropped: np.ndarray
               ) -> tuple[np.ndarray, int]:
    """`matrix` normalised to unit rows; refuses another dimension than `dim`, NaN and zero vectors."""
    def row_of(k: int) -> int:  # position in the file, counting rows dropped as unreadable images
        return row0 + int(np.flatnonzero(~dropped)[k])

    if dim is not None and matrix.shape[1] != dim:
        raise EmbeddingsError(f"{path} row {row0}: embedding has {matrix.shape[1]} values, but the embeddings "
                              f"before it have {dim}")
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad):
        raise EmbeddingsError(f"{path} row {row_of(int(bad[0]))}: embedding has NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise EmbeddingsError(f"{path} row {row_of(int(zero[0]))}: embedding is all zeros (no direction to compare)")
    return matrix / norms[:, None], matrix.shape[1]


def _check_unique(loaded: LoadedEmbeddings) -> None:
    """Removal works by ID: an ID twice would remove both copies or neither. Name the second one."""
    if pc.count_distinct(loaded.ids).as_py() == len(loaded.ids):
        return
    seen: set[str] = set()
    for row, value in enumerate(loaded.ids.to_pylist()):
        if value in seen:
            raise EmbeddingsError(f"{loaded.locate(row)}: ID {value!r} appears a second time; IDs must be unique")
        seen.add(value)

"""A folder of Parquet files listing the IDs to remove: finding the files, refusing the wrong folder,
reading the ID column, and a digest of the content that keys caches and resumes.

The removal stage reads every `*.parquet` under the folder, as NeMo Curator's does. That contract
makes one mistake easy and costly: pointing it at a folder whose tables list images that must
stay (a `find` output root, whose hash tables list every image; `groups/`, which lists the kept
member of every group). Such folders are recognised and refused, naming the folder to pass.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from imagesieve.storage.ours import file_digest
from imagesieve.storage.runfolder import WORK_DIR, parquet_files

# Columns that mark a table as something other than a list of IDs to remove.
_GROUPS_COLUMNS = {"group_id", "kept_id"}
_HASH_COLUMNS = {"bytes_hash", "position"}


class WrongIdFolderError(ValueError):
    """The ID folder holds tables that list images which must not be removed."""


def _id_folder_near(path: str) -> str:
    """The ID folder a user who passed a file most likely meant: the `duplicates/` of the run the file
    belongs to (a find or dedup output, or one of its subfolders), else the file's folder."""
    folder = os.path.dirname(os.path.abspath(path))
    for candidate in (folder, os.path.dirname(folder)):
        if os.path.isdir(os.path.join(candidate, "duplicates")):
            return os.path.join(candidate, "duplicates")
    return folder


def list_parquet_files(directory: str) -> list[str]:
    """Every `*.parquet` under `directory`, recursively, sorted; hidden files (temp files) skipped.

    `FileNotFoundError` when there is none, as in the reference.
    """
    if os.path.isfile(directory):
        raise NotADirectoryError(f"{directory!r} is a file; pass the folder of Parquet files that holds the duplicate "
                                 f"IDs (e.g. {_id_folder_near(directory)!r})")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"duplicate ID folder {directory!r} does not exist")
    files = parquet_files(directory)
    if not files:
        raise FileNotFoundError(f"No parquet files found in {directory}")
    return files


def check_id_folder(directory: str, files: list[str]) -> None:
    """Refuse a `find` output root, a `remove` output, a groups table or a hash table as the ID folder."""
    if os.path.isdir(os.path.join(directory, "duplicates")) and (
            os.path.isdir(os.path.join(directory, "groups")) or os.path.isdir(os.path.join(directory, "hashes"))):
        raise WrongIdFolderError(
            f"{directory} is the output folder of `imagesieve find`: its tables list every image, not only the "
            f"duplicates. Pass {os.path.join(directory, 'duplicates')} instead")
    inside = [p for p in [directory, *files] if WORK_DIR in os.path.realpath(p).split(os.sep)]
    if inside:
        raise WrongIdFolderError(f"{inside[0]} lies in a run's own records ({WORK_DIR}/): its tables list samples a "
                                 "run read, kept or wrote, not IDs to remove; pass the duplicates/ folder of "
                                 "`imagesieve find`")
    if os.path.isdir(os.path.join(directory, WORK_DIR)):
        raise WrongIdFolderError(f"{directory} is the output folder of `imagesieve remove`, not a list of IDs "
                                 "to remove; pass the duplicates/ folder of `imagesieve find`")
    for path in files:
        names = set(_schema(path).names)
        if names & _GROUPS_COLUMNS:  # a groups table, even with columns dropped: it names the kept images
            raise WrongIdFolderError(
                f"{path} is a table of duplicate groups: it lists the kept image of every group too, so using it "
                "would remove every copy. Pass the duplicates/ folder beside it instead")
        if names >= _HASH_COLUMNS:
            raise WrongIdFolderError(f"{path} is a hash table of `imagesieve find`: it lists every image. Pass the "
                                     "duplicates/ folder of the find output instead")
        if "embeddings" in names or "embedding" in names:
            raise WrongIdFolderError(f"{path} is a table of embeddings: it lists every image. Pass the duplicates/ "
                                     "folder of the find output instead")


def _schema(path: str) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from exc


def check_id_column(path: str, id_field: str) -> None:
    """The file has exactly one ID column: with two of that name, readers silently take the first."""
    schema = _schema(path)
    if id_field not in schema.names:
        raise ValueError(f"{path}: no column {id_field!r}; the file has columns {schema.names}. "
                         "Pass the right column name (--id-field / duplicate_id_field).")
    if (count := schema.names.count(id_field)) > 1:
        raise ValueError(f"{path}: {count} columns are named {id_field!r}, so which holds the IDs is unclear; "
                         "write the file with one column of that name")


def convert_id_batch(column: pa.Array, path: str, id_field: str, notes: list[str]) -> pa.Array:
    """IDs as strings: integers converted (and noted, once per file), nulls and other types refused."""
    if column.null_count:
        raise ValueError(f"{path}: column {id_field!r} has {column.null_count} null IDs")
    kind = column.type
    if pa.types.is_integer(kind):
        note = f"{path}: column {id_field!r} holds integers ({kind}); converted to strings"
        if note not in notes:
            notes.append(note)
        return pc.cast(column, pa.string())
    if pa.types.is_dictionary(kind) and pa.types.is_string(kind.value_type):
        return pc.cast(column, pa.string())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return pc.cast(column, pa.string())
    raise ValueError(f"{path}: column {id_field!r} has type {kind}; expected strings (or integers)")


def content_digest(files: list[str], id_field: str) -> str:
    """A digest of what the files hold (their bytes), independent of their names, paths and mtimes:
    the same IDs copied or touched give the same digest, any changed byte another one."""
    per_file = sorted(_file_digest(path) for path in files)
    digest = xxhash.xxh3_128(id_field.encode("utf-8") + b"\0")
    for item in per_file:
        digest.update(item)
    return digest.hexdigest()


def _file_digest(path: str) -> bytes:
    return bytes.fromhex(file_digest(path))

"""What the backends share with the run folder's atomic writes and locks: the names of our temp files
and the error of a folder another run holds. Kept apart so that a backend needs nothing above it."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable

_TEMP_MARK = ".imagesieve-tmp-"
_LONGEST_NAME = 200  # bytes of a name kept in its temp name; longer ones are named by their hash
_TEMP_NAME = re.compile(r"^\..+" + re.escape(_TEMP_MARK) + r"\d+$")


def temp_name(path: str) -> str:
    """Where `path` is written before it is renamed into place: hidden (Parquet dataset readers and
    globs skip it) and named `.NAME.imagesieve-tmp-PID`, a name no other program uses, so that a
    rerun can delete what a killed run left without ever touching a file it did not write."""
    folder, name = os.path.split(path)
    if len(name.encode("utf-8", "surrogateescape")) > _LONGEST_NAME:  # (a name near the file system's 255 bytes)
        name = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
    return os.path.join(folder, f".{name}{_TEMP_MARK}{os.getpid()}")


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


class OutputInUseError(RuntimeError):
    """Another run is writing to the same output folder."""


WORK_DIR = "_imagesieve"  # every imagesieve run folder holds its records here


def path_parts(path: str) -> list[str]:
    """A local path's or URL's components after the scheme, so `s3a://b/x/` and `s3://b/x` give the same."""
    if "://" in path and not path.startswith("file://"):
        return [p for p in path.split("://", 1)[1].split("/") if p]
    return [p for p in os.path.abspath(path.removeprefix("file://")).split(os.sep) if p]


def run_folder_on_the_way(path: str, root: str, holds_run: Callable[[str], bool],
                          own_records: bool = False) -> str | None:
    """The one rule for what belongs to another run: the folder below `root` (root excluded) on the way to
    `path` that holds an imagesieve run's records (`holds_run(folder)`), or is a records folder itself
    (root's own too, unless `own_records`). What lies there is that run's: never read as input, never
    cleaned up or listed by a run into `root`. None when `path` is root's (or not under it)."""
    parts, base = path_parts(path), path_parts(root)
    if parts[:len(base)] != base:
        return None
    sep = "/" if "://" in root and not root.startswith("file://") else os.sep
    folder = root.rstrip(sep) or sep
    for depth, part in enumerate(parts[len(base):-1]):
        folder = folder.rstrip(sep) + sep + part
        if (part == WORK_DIR and (depth or not own_records)) or holds_run(folder):
            return folder
    return None


def listed_runs(paths: list[str]) -> Callable[[str], bool]:
    """`holds_run` read from a recursive listing (object storage, where asking costs a request per
    folder): a folder holds a run when the listing shows a key under its `_imagesieve/`."""
    runs = {tuple(parts[:parts.index(WORK_DIR)]) for parts in map(path_parts, paths) if WORK_DIR in parts[:-1]}
    return lambda folder: tuple(path_parts(folder)) in runs


def outside_run_folders(paths: list[str], root: str, own_records: bool = False) -> list[str]:
    """`paths` (a recursive listing of `root`) without what `run_folder_on_the_way` gives to another run."""
    holds = listed_runs(paths)
    return [p for p in paths if run_folder_on_the_way(p, root, holds, own_records) is None]

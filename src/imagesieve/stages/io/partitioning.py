"""FilePartitioningStage: turn a folder, glob or list of shards into `FileGroupTask`s."""

from __future__ import annotations

import glob
import logging
import os
import posixpath
import stat
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache

from braceexpand import braceexpand

from imagesieve.stages.base import ProcessingStage
from imagesieve.storage import absolute, is_remote, local_path, storage_for
from imagesieve.storage.base import is_temp_name, outside_run_folders, run_folder_on_the_way
from imagesieve.storage.runfolder import SHARD_SUFFIXES, holds_run
from imagesieve.tar.names import IMAGE_SUFFIXES
from imagesieve.tasks import EmptyTask, FileGroupTask

logger = logging.getLogger(__name__)
LONGEST_SHARD_NAME = 255 - len(".parquet")  # a shard's records are named NAME.parquet, NAME.json


def list_shards(source: str | list[str], suffixes: tuple[str, ...] = SHARD_SUFFIXES,
                storage_options: dict | None = None) -> list[tuple[str, str]]:
    """(path, path relative to the input root) of every shard, sorted by the relative path.

    `source` is, as webdataset users write it: a folder (searched recursively, symlinked folders
    followed), a glob (`data/**/*.tar`), a brace pattern (`data/{00000..00999}.tar`), a single
    shard, a text file (`.txt`) listing any of these one per line, or a list of these. Files that
    are not shards (img2dataset's `.parquet` and `_stats.json` beside them) are skipped. Relative
    paths (which name the outputs) are taken from the common folder of all sources. Any of these may be
    a URL (`s3://bucket/shards/{00000..00099}.tar`), listed with `storage_options`.

    Each source leaves out what lies in an earlier run's folder below its root (`run_folder_on_the_way`):
    the folder itself, a glob's fixed part, the folder shared by a brace pattern's or a list file's
    entries. Naming a run's folder (`dedup_out/shards`) or a shard in it as a source reads it.
    """
    sources = [source] if isinstance(source, str) else list(source)
    matched: dict[str, str] = {}  # absolute path -> the root it was found under
    holds = _run_folder_test(storage_options)
    left_out, images = 0, []
    for spec in sources:
        here = {absolute(path): absolute(root or ".") for src in _expand(spec)
                for path, root in _match(src, suffixes, storage_options, images)}
        top = _common_root(set(here.values()))
        for path, root in here.items():
            if run_folder_on_the_way(path, top, holds) is None:
                matched.setdefault(path, root)
            else:
                left_out += 1
    if not matched:
        raise FileNotFoundError(f"no tar shards ({', '.join(suffixes)}) found in {', '.join(map(str, sources))}" + (
            f" but {left_out} in folders of earlier imagesieve runs, whose outputs are never input" if left_out else
            "; a folder of image files is read when it is INPUT itself (not a glob or a list)"))
    if images:  # a run reads one kind: loose images beside shards would be in neither output nor removed list
        raise ValueError(f"the input holds both tar shards ({_a_few(list(matched))}) and loose image files "
                         f"({_a_few(images)}); a run reads one kind: list only the shards, or pass the image "
                         "folder alone as INPUT")
    paths = _UrlPaths if is_remote(next(iter(matched))) else os.path
    common = _common_root(set(matched.values()))
    found = {path: paths.relpath(path, common) for path in matched}
    if paths is os.path:
        refuse_two_names(list(found))
    for path, relative in found.items():  # names an output: it must lie inside OUT
        if len(os.path.basename(relative).encode("utf-8", "surrogateescape")) > LONGEST_SHARD_NAME:
            raise ValueError(f"{path}: the name is too long for the records kept beside its output (at most "
                             f"{LONGEST_SHARD_NAME} bytes, as `NAME.parquet` must fit in 255); rename it")
        if relative == ".." or relative.startswith(("../", ".." + os.sep)) or os.path.isabs(relative):
            raise ValueError(f"{path}: its path relative to the input ({common}) leaves it ({relative}); "
                             "list the shards under one folder")
    return sorted(found.items(), key=lambda item: item[1])


def _a_few(paths: list[str], count: int = 3) -> str:
    return ", ".join(sorted(paths)[:count]) + (f" and {len(paths) - count} more" if len(paths) > count else "")


def _common_root(roots: set[str]) -> str:
    """The folder that all `roots` (absolute paths, or URLs of one scheme) lie in."""
    if len({is_remote(r) for r in roots}) > 1:
        raise ValueError("the input mixes local shards and object storage URLs; list only one kind")
    if len(roots) <= 1:
        return next(iter(roots), "")
    return (_UrlPaths if is_remote(next(iter(roots))) else os.path).commonpath(list(roots))


def refuse_two_names(paths: list[str]) -> None:
    """One shard listed under two names (a symlinked folder, a hard link) would be read, counted and
    written twice, once under each name: refuse the input, naming both."""
    seen: dict[tuple[int, int], str] = {}
    for path in paths:
        st = os.stat(path)  # follows links: one device and inode for every name of the file
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise ValueError(f"{seen[key]} and {path} are the same file under two names (a symlink or a hard "
                             "link): list it once")
        seen[key] = path


class _UrlPaths:
    """`commonpath` and `relpath` for URLs of one scheme, standing in for `os.path`."""

    @staticmethod
    def _path(url: str) -> str:  # memory:///a and memory://a name the same object; so do s3://b/k and s3:///b/k
        return url.split("://", 1)[1].lstrip("/")

    @staticmethod
    def commonpath(urls: list[str]) -> str:
        scheme = urls[0].split("://", 1)[0] + "://"
        return scheme + posixpath.commonpath([_UrlPaths._path(u) for u in urls])

    @staticmethod
    def relpath(url: str, start: str) -> str:
        return posixpath.relpath(_UrlPaths._path(url), _UrlPaths._path(start))


def _expand(spec: str) -> list[str]:
    """A brace pattern's paths, a list file's lines (each expanded again), or the spec itself."""
    if spec.startswith("file://"):
        return _expand(local_path(spec))
    if "{" in spec and "}" in spec and (is_remote(spec) or not os.path.exists(spec)):
        return list(braceexpand(spec))
    if spec.endswith((".txt", ".lst")) and not is_remote(spec) and os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        folder = os.path.dirname(spec)
        return [p for line in lines
                for p in _expand(line if "://" in line else os.path.join(folder, os.path.expanduser(line)))]
    return [spec]


def _match(src: str, suffixes: tuple[str, ...], storage_options: dict | None = None,
           images: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """(shard path, root) for one expanded source; the image files it names or holds are added to `images`.
    A shard named in another case (`00001.TAR`) is refused, naming it, never silently skipped."""
    if is_remote(src):
        yield from _keep_shards(*_match_remote(src, suffixes, storage_options), suffixes, images, posixpath)
        return
    if glob.has_magic(src):
        root = _glob_root(src)
        paths = [p for p in glob.glob(src, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(src):
        root, paths = src, list(walk_files(src))
    elif os.path.isfile(src):
        if not src.endswith(suffixes):
            raise ValueError(f"{src}: not a tar shard (expected a name ending in {', '.join(suffixes)})")
        root, paths = os.path.dirname(src), [src]
    else:
        raise FileNotFoundError(f"{src}: no such file or folder")
    yield from _keep_shards(root, paths, suffixes, images, os.path)


def _keep_shards(root: str, paths: list[str], suffixes: tuple[str, ...], images: list[str] | None,
                 names: object) -> Iterator[tuple[str, str]]:
    for path in paths:
        name = names.basename(path)
        if is_temp_name(name):
            continue
        if name.endswith(suffixes):
            yield path, root
        elif images is not None and name.lower().endswith(IMAGE_SUFFIXES):
            images.append(path)
        else:
            refuse_shard_in_other_case(path, suffixes)


def refuse_shard_in_other_case(path: str, suffixes: tuple[str, ...] = SHARD_SUFFIXES) -> None:
    """`00001.TAR` is neither read as a shard nor skipped without a word: refused, naming it."""
    if path.lower().endswith(suffixes) and not path.endswith(suffixes):
        raise ValueError(f"{path}: a tar shard whose extension is not lower case is not read as one; rename it "
                         f"(to {', '.join(suffixes)})")


def _match_remote(src: str, suffixes: tuple[str, ...], storage_options: dict | None) -> tuple[str, list[str]]:
    """(root, files) for one URL: a glob, a "folder" (a prefix, listed recursively) or one object."""
    store = storage_for(src, storage_options)
    if glob.has_magic(src):
        root, paths = _glob_root(src, "/"), store.glob(src)
    elif store.isfile(src):
        if not src.endswith(suffixes):
            raise ValueError(f"{src}: not a tar shard (expected a name ending in {', '.join(suffixes)})")
        root, paths = posixpath.dirname(src), [src]
    elif store.isdir(src):
        root, paths = src, outside_run_folders(store.list_files(src), src)  # as `list_shards` would, in one listing
    else:
        raise store.missing(src)
    return root, paths


def walk_files(folder: str) -> Iterator[str]:
    """Every regular file under `folder`, following symlinked folders (a dataset is often assembled from
    links) but entering each real folder once, so a link loop cannot recurse forever; never entering
    another run's folder (`run_folder_on_the_way`). A folder is read under its real path when it has one
    under `folder` (`real/`, not the link `alias -> real` that sorts before it): the folders reached
    without a link come first, then those reached only through links, each under the name of the first
    link met (fewest links first, then walk order).

    Entries that are not regular files (a broken symlink, a FIFO, a socket) hold no data to read or
    copy, and reading a FIFO would block forever: they are left out, each named in a warning."""
    seen: set[str] = set()
    holds = _run_folder_test(None)
    tops = deque([folder])  # the input, then each symlinked folder met, in the order met
    while tops:
        top = tops.popleft()
        for root, dirs, files in os.walk(top):  # (no link below `top` is followed here: each waits in `tops`)
            real = os.path.realpath(root)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if run_folder_on_the_way(os.path.join(root, d, "x"), root, holds) is None)
            tops.extend(os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d)))
            for name in sorted(files):
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    yield path
                elif os.path.abspath(path) not in _warned:  # once per run, though a run lists its input more than once
                    _warned.add(os.path.abspath(path))
                    logger.warning("%s: left out, not a regular file (%s)", path, _what_it_is(path))


_warned: set[str] = set()


def _run_folder_test(storage_options: dict | None) -> Callable[[str], bool]:
    """`holds_run` for listing input, asked once per folder, each folder it is true of named in a warning
    (once per run): a folder inside the input that holds an imagesieve run (an earlier output) is left out."""
    @cache
    def holds(folder: str) -> bool:
        if not holds_run(folder, storage_options):
            return False
        if absolute(folder) not in _warned:
            _warned.add(absolute(folder))
            logger.warning("%s: left out, it holds an imagesieve run (_imagesieve/)", folder)
        return True
    return holds


def _what_it_is(path: str) -> str:
    if not os.path.exists(path):
        return "a broken symlink"
    mode = os.stat(path).st_mode
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or special file"


def _glob_root(pattern: str, sep: str = os.sep) -> str:
    parts = []
    for part in pattern.split(sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return sep.join(parts)


@dataclass
class FilePartitioningStage(ProcessingStage[EmptyTask, FileGroupTask]):
    """Lists shards and groups them, `files_per_partition` to a task (default one shard per task)."""

    file_paths: str | list[str] = field(default_factory=list)
    files_per_partition: int | None = 1  # None: 1, as in the reference
    file_extensions: tuple[str, ...] | list[str] | None = SHARD_SUFFIXES
    dataset_name: str = "dataset"
    blocksize: int | str | None = None  # the reference's; refused: a shard is never split or merged by size
    storage_options: dict | None = None  # the reference's: for URLs (s3://, gs://), passed to fsspec
    limit: int | None = None  # at most this many tasks
    name: str = "file_partitioning"

    def __post_init__(self) -> None:
        if self.blocksize is not None:
            raise ValueError("FilePartitioningStage: blocksize cannot apply here (tasks are whole shards); "
                             "use files_per_partition")

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def process(self, task: EmptyTask) -> list[FileGroupTask]:
        shards = list_shards(self.file_paths, tuple(self.file_extensions or SHARD_SUFFIXES), self.storage_options)
        size = max(1, self.files_per_partition or 1)
        tasks = [
            FileGroupTask(dataset_name=self.dataset_name, task_id=f"files_{i // size:06d}",
                          data=[p for p, _ in group],
                          _metadata={"relative_paths": {p: rel for p, rel in group}})
            for i in range(0, len(shards), size)
            for group in [shards[i:i + size]]
        ]
        return tasks[:self.limit] if self.limit is not None else tasks

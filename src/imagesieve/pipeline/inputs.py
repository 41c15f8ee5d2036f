"""What a run reads, as units of per-shard work: tar shards, or chunks of a folder of image files.

A unit has a relative name (which names its outputs and work files), a fingerprint of the version
of the input it covers (so results of another version are never reused), and the task that reads
it. An image folder (INPUT holds image files and no tar shards) is cut into chunks of
`FOLDER_CHUNK` files in path order; an image's ID there is its path relative to INPUT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property

import xxhash

from imagesieve.stages.io.partitioning import list_shards, refuse_shard_in_other_case
from imagesieve.stages.io.sidecar import input_fingerprint, sidecar_path
from imagesieve.storage import (
    PATTERN_CHARS,
    can_hold,
    is_pattern,
    is_under,
    listed_path,
    local_file,
    local_folder,
    local_path,
    missing_locally,
    parent,
    read_schema,
    separator,
    storage_for,
)
from imagesieve.storage.base import is_temp_name
from imagesieve.storage.listing import walk_files
from imagesieve.storage.runfolder import (
    RESERVED,
    SHARD_SUFFIXES,
    WORK_DIR,
    enclosing_runs,
    read_json,
    refuse_unfinished_run,
    shard_fingerprint,
    strip_shard_suffix,
)
from imagesieve.tar.names import IMAGE_SUFFIXES
from imagesieve.tasks import FileGroupTask
from imagesieve.util.cache_dir import default_cache_dir

FOLDER_CHUNK = 1000


@dataclass(frozen=True)
class InputUnit:
    rel: str  # e.g. "sub/00000.tar", or "chunk-00000" of an image folder
    paths: tuple[str, ...]  # the tar shard, or the chunk's files (absolute)
    root: str = ""  # image folders: INPUT, against which IDs are taken
    storage_options: dict | None = field(default=None, compare=False, repr=False)  # for a URL (s3://...)
    sidecars: bool = False  # the version also covers img2dataset's .parquet and _stats.json beside the shard

    @property
    def is_folder_chunk(self) -> bool:
        return bool(self.root)

    @cached_property
    def fingerprint(self) -> str:
        """The input version this unit covers, taken once: the listing decides what is done and what is
        redone, and the task records the same value (a folder chunk costs a stat per file)."""
        if not self.is_folder_chunk:  # with sidecars (removal filters them too), the reader records the same
            return input_fingerprint(self.paths[0], self.storage_options, self.sidecars)
        digest = xxhash.xxh3_128()
        for path in self.paths:
            digest.update(f"{os.path.relpath(path, self.root)}\0{shard_fingerprint(path)}\0".encode())
        return digest.hexdigest()

    def task(self) -> FileGroupTask:
        metadata = {"relative_paths": {p: self.rel for p in self.paths}, "input_fingerprint": self.fingerprint}
        if self.sidecars:
            metadata["sidecars"] = True  # the reader's version covers them too (`sidecar.input_fingerprint`)
        if self.is_folder_chunk:
            metadata.update(root=self.root, relative_path=self.rel)
        return FileGroupTask(dataset_name="input", data=list(self.paths), task_id=self.rel, _metadata=metadata)


def split_tail(tasks: list[FileGroupTask], workers: int) -> list[FileGroupTask]:
    """`tasks` with each of the last `workers` (tar shards, one each) cut into `workers` parts, read as
    `("part": (index, count))` says: the workers then finish together, where whole shards would leave
    one of them hashing a last shard alone while the others idle (a tenth of a run of ten shards).
    Only a stage that knows parts may come after the reader (the hash writer)."""
    if workers < 2:
        return tasks
    tail = len(tasks) - min(workers, len(tasks))
    parts = [replace(task, task_id=f"{task.task_id}#{index}", _metadata={**task._metadata, "part": (index, workers)})
             for task in tasks[tail:] for index in range(workers)]
    return tasks[:tail] + parts


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)




def input_units(input_path: str | list[str], output_dir: str, run_dir: str | None = None,
                storage_options: dict | None = None) -> list[InputUnit]:
    """The units of work of INPUT: its tar shards, or the chunks of an image folder. INPUT may not
    overlap `run_dir` (default `output_dir`: the folder the run owns) in either direction, and folders
    inside it that hold an earlier imagesieve run are left out (`walk_files`)."""
    for folder in dict.fromkeys([output_dir, run_dir or output_dir]):  # a dedup's step: its folder and its own
        check_input_outside(input_path, folder, storage_options)
    refuse_unfinished_input(input_path, storage_options)
    if isinstance(input_path, str) and (folder := local_folder(input_path)):  # image folders: local ones only
        refuse_run_folder(folder)
        files = dataset_files(folder)
        for path in files:
            refuse_shard_in_other_case(path)
        shards = [p for p in files if p.endswith(SHARD_SUFFIXES) and not is_temp_name(os.path.basename(p))]
        images = [p for p in files if is_image(p)]
        if shards and images:
            raise ValueError(f"{input_path} holds both tar shards ({_a_few(shards, folder)}) and loose image files "
                             f"({_a_few(images, folder)}); a run reads one kind: pass the shards' folder (or a "
                             "glob such as 'DIR/**/*.tar'), or move the shards out of the image folder")
        if not shards:
            return folder_units(folder, files)
    return [InputUnit(rel, (path,), storage_options=storage_options)
            for path, rel in input_shards(input_path, output_dir, storage_options)]


def refuse_unfinished_input(input_path: str | list[str], storage_options: dict | None = None) -> None:
    """An input that is (or lies in) a run's output folder is read only when that run has finished:
    `runfolder.refuse_unfinished_run` on each input root's folder and the run folder around it."""
    for root in input_roots(input_path):
        folder = parent(root) if local_file(root) else root
        for run in dict.fromkeys([folder, *enclosing_runs(folder, storage_options)[:1]]):
            refuse_unfinished_run(run, storage_options)


def _a_few(paths: list[str], root: str, count: int = 3) -> str:
    shown = ", ".join(os.path.relpath(p, root) for p in paths[:count])
    return shown + (f" and {len(paths) - count} more" if len(paths) > count else "")


def refuse_run_folder(folder: str) -> None:
    """The output folder of a `find` or `dedup` run is not a dataset (its clean shards are in `shards/`;
    its report thumbnails are images): refuse it as input, saying where the shards are."""
    summary = os.path.join(folder, "summary.json")
    if os.path.isdir(os.path.join(folder, WORK_DIR)) and os.path.isfile(summary):
        try:
            is_find_output = "config" in read_json(summary)
        except (OSError, ValueError):
            is_find_output = False
        if is_find_output:
            hint = f"; its clean shards are in {os.path.join(folder, 'shards')}" \
                if os.path.isdir(os.path.join(folder, "shards")) else ""
            raise ValueError(f"{folder} is the output folder of an imagesieve find or dedup run, not a dataset{hint}")


def check_input_outside(input_path: str | list[str], output_dir: str, storage_options: dict | None = None,
                        what: str = "input") -> None:
    """INPUT and OUT may not overlap in either direction: an output folder inside the input would be
    listed as input by this run or the next (and its shards could replace input shards of the same
    name); an input inside the output folder would be cleaned up and written over. Both are refused
    before anything is read or written, naming both folders."""
    for root in input_roots(input_path):
        if is_under(output_dir, root) and can_hold(root):
            same = "is" if is_under(root, output_dir) else "lies inside"
            raise ValueError(f"the output folder {output_dir} {same} the {what} {root}: its outputs would be read "
                             f"back as {what}, or replace {what} files of the same name; choose an output folder "
                             f"outside the {what} (e.g. beside it)")
        if is_under(root, output_dir) and storage_for(root, storage_options).exists(root):
            raise ValueError(f"the {what} {root} lies inside the output folder {output_dir}; choose an output "
                             f"folder outside the {what}")


def check_sources_apart(output_dir: str, reads: dict[str, str | list[str] | None],
                        storage_options: dict | None = None) -> None:
    """OUT may not lie in what a run reads besides INPUT (an ID folder, embeddings, a model folder; by what
    it is): its outputs would be read back with it (removed.parquet as IDs by the next run). (Such a
    source inside OUT is refused by the run folder's own checks: files no run wrote, or another run's.)"""
    for what, source in reads.items():
        for root in input_roots(source) if source else []:
            if is_under(output_dir, root) and can_hold(root):
                same = "is" if is_under(root, output_dir) else "lies inside"
                raise ValueError(f"the output folder {output_dir} {same} the {what} {root}: its outputs would be "
                                 f"read back with the {what}; choose an output folder outside it (e.g. beside it)")


def check_removed_path(removed_path: str, input_path: str | list[str], storage_options: dict | None = None) -> None:
    """A list of removed samples written elsewhere than OUT (`--removed-path`) may not land in INPUT, nor
    replace a file that is not such a list (an input shard, a user's Parquet file): refused before any work."""
    for root in input_roots(input_path):
        if is_under(removed_path, root):
            raise ValueError(f"the removed list {removed_path} lies inside the input {root}: write it elsewhere")
    store = storage_for(removed_path, storage_options)
    if store.exists(removed_path):
        try:
            names = read_schema(removed_path, storage_options).names
        except Exception:
            names = None
        if names != ["id", "shard", "reason"]:
            raise ValueError(f"{removed_path} exists and is not a list of removed samples that imagesieve wrote; "
                             "imagesieve never replaces files it did not create: pass another path")


def check_cache_apart(cache_dir: str | None, input_path: str | list[str], output_dir: str,
                      reads: dict[str, str | list[str] | None] | None = None) -> None:
    """The ID index cache (`cache_dir`, default `default_cache_dir()`) may not lie inside INPUT, where its
    files would be written into a dataset and listed as input, nor inside OUT, whose next run would take
    them for files no run wrote, nor inside what else the run reads (`reads`: the ID folder, the reference
    set, by what it is): refused before anything is made, the cache included."""
    cache = cache_dir or default_cache_dir()
    if os.path.lexists(cache) and not os.path.isdir(cache):
        raise ValueError(f"the cache folder {cache} exists and is not a folder: pass a --cache-dir that is a folder "
                         "(or a path to make one)")
    read = [(root, what) for what, paths in (reads or {}).items() if paths for root in input_roots(paths)]
    for folder, what in [*((root, "input") for root in input_roots(input_path)), (output_dir, "output folder"),
                         *read]:
        if is_under(cache, folder):
            raise ValueError(f"the cache folder {cache} lies inside the {what} {folder}: the ID index would be "
                             f"written there; pass a --cache-dir outside what the run reads and writes")


def input_roots(input_path: str | list[str]) -> list[str]:
    """The folders (or single files) an input covers: a folder or file itself, the fixed part of a glob or
    brace pattern (`data/**/*.tar` -> `data`), each line of a list file."""
    roots = []
    for spec in [input_path] if isinstance(input_path, str) else input_path:
        spec = local_path(spec)
        if spec.endswith((".txt", ".lst")) and local_file(spec):
            folder = os.path.dirname(spec)
            with open(spec, encoding="utf-8") as f:
                lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
            roots += input_roots([listed_path(line, folder) for line in lines])
        elif is_pattern(spec):
            sep = separator(spec)
            fixed = []
            for part in spec.split(sep):
                if any(c in part for c in PATTERN_CHARS):
                    break
                fixed.append(part)
            roots.append(sep.join(fixed) or ".")
        else:
            roots.append(spec)
    return roots


def check_input_first(input_path: str | list[str], output_dir: str, storage_options: dict | None = None,
                      reads: dict[str, str | list[str] | None] | None = None) -> None:
    """What must hold before a run creates anything (its output folder, its lock): each input path
    exists, none overlaps the output folder, and the input lists as one kind of work (`input_units`:
    shards or an image folder, not both), so that a refused run creates nothing. `reads`: what else
    the run reads, by what it is (`check_sources_apart`)."""
    check_sources_apart(output_dir, reads or {}, storage_options)
    if local_file(output_dir):
        raise ValueError(f"the output folder {output_dir} exists and is a file; imagesieve never replaces files it "
                         "did not create: choose another path")
    for source in [input_path] if isinstance(input_path, str) else input_path:
        if not is_pattern(source) and missing_locally(source):  # (a URL is checked when listed)
            hint = " (a quoted '~' is not expanded by the shell: give the path without quotes)" \
                if source.startswith("~") else ""
            raise FileNotFoundError(f"input {source} does not exist{hint}")
    input_units(input_path, output_dir, storage_options=storage_options)


def folder_units(root: str, files: list[str], chunk: int = FOLDER_CHUNK) -> list[InputUnit]:
    """Chunks of the image files among `files` (the listing of `root`), in path order."""
    for path in files:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # IDs are UTF-8 strings in every list: refuse the name, naming it
            raise ValueError(f"{path!r}: the file name is not valid UTF-8, so it cannot be an image ID; rename it "
                             "(e.g. convmv -f latin1 -t utf-8)") from None
    clashes = [p for p in files if os.path.relpath(p, root).split(os.sep)[0] in RESERVED]
    if clashes:
        raise ValueError(f"{clashes[0]}: the output keeps its own {', '.join(RESERVED)} at the top of the tree, so "
                         "this input file would be overwritten there; rename or move it")
    images = sorted((p for p in files if is_image(p)), key=lambda p: os.path.relpath(p, root))
    if not images:
        raise FileNotFoundError(f"no tar shards and no image files ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return [InputUnit(f"chunk-{k // chunk:05d}", tuple(os.path.abspath(p) for p in images[k:k + chunk]),
                      os.path.abspath(root)) for k in range(0, len(images), chunk)]


def other_files(root: str) -> list[str]:
    """Files of an image folder that are not images (captions, notes), relative to it."""
    return sorted(os.path.relpath(p, root) for p in dataset_files(root) if not is_image(p))


def input_files_and_folders(units: list[InputUnit]) -> list[str]:
    """Every file of the units and the folders holding them: whom OUT must be closed to
    (`runfolder.narrow_to_files`: a 0700 input folder guards its 0644 shards)."""
    files = [path for unit in units for path in unit.paths]
    return files + sorted({os.path.dirname(os.path.abspath(p)) for p in files if "://" not in p})


def dataset_files(folder: str) -> list[str]:
    """The files of an image folder (`walk_files`: a run's records and lists at the top of its own output
    folder, a dedup's clean image folder given as INPUT or one met inside it, are not data)."""
    return list(walk_files(folder))


def input_shards(input_path: str | list[str], output_dir: str,
                 storage_options: dict | None = None) -> list[tuple[str, str]]:
    """The shards to read: those of `input_path` (which `check_input_outside` has kept apart from
    `output_dir`)."""
    shards = list_shards(input_path, storage_options=storage_options)
    inside = [path for path, _ in shards if is_under(path, output_dir)]
    if inside:  # a list file naming output shards, say: never read an output back as input
        raise ValueError(f"the input shard {inside[0]} lies inside the output folder {output_dir}; choose an "
                         "output folder outside the input")
    check_sidecars_distinct(shards, storage_options)
    return shards


def check_sidecars_distinct(shards: list[tuple[str, str]], storage_options: dict | None = None) -> None:
    """x.tar and x.tar.gz would both filter x.parquet into the same output file: refuse that input."""
    by_stem: dict[str, str] = {}
    for path, rel in shards:
        stem = strip_shard_suffix(rel)
        if stem in by_stem and storage_for(path, storage_options).exists(sidecar_path(path)):
            raise ValueError(f"{by_stem[stem]} and {path} share the metadata table {sidecar_path(path)}; "
                             "keep only one of the two shards in the input")
        by_stem[stem] = path

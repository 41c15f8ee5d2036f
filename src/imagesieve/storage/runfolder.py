"""The layout of an output folder and atomic writes into it.

OUTPUT/<shard path>.tar                   kept samples, members byte-for-byte
OUTPUT/removed.parquet                    every removed sample: id, shard, reason
OUTPUT/summary.json                       counts of the whole run
OUTPUT/_imagesieve/index/<shard>.parquet  per kept sample: key, member names, sizes
OUTPUT/_imagesieve/removed/<shard>.parquet  removed samples of one shard
OUTPUT/_imagesieve/done/<shard>.json      written last for a shard: its counts; a rerun skips it
OUTPUT/_imagesieve/lock                   held by the run writing the folder
(<shard> is the shard's whole path relative to the input root, e.g. sub/00000.tar)

OUTPUT may be a URL (`s3://bucket/prefix`): every function here then goes through `imagesieve.storage`
with the run's `storage_options`.
"""

from __future__ import annotations

import fcntl
import json
import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from imagesieve.storage import is_remote, is_under, join, normal_url, storage_for
from imagesieve.storage.base import (
    WORK_DIR,
    OutputInUseError,
    is_temp_name,
    listed_runs,
    path_parts,
    run_folder_on_the_way,
    temp_name,
)

SHARD_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")  # compressed: read by tarfile, written alike


def strip_shard_suffix(relative_path: str) -> str:
    for suffix in SHARD_SUFFIXES:
        if relative_path.endswith(suffix):
            return relative_path[: -len(suffix)]
    return relative_path


def batch_relative_path(metadata: dict[str, Any], task_id: str) -> str:
    """The input-relative shard path a batch came from, which names its outputs."""
    return metadata.get("relative_path") or f"{task_id or 'shard'}.tar"


def shard_fingerprint(path: str, storage_options: dict | None = None) -> str:
    """Identifies one version of an input file (`storage.local.file_fingerprint`; an object's size and
    ETag). Per-shard results (hash tables, embeddings, done markers) record it, and a rerun redoes a
    shard whose file no longer has it."""
    return storage_for(path, storage_options).fingerprint(path)


def work_path(output_dir: str, kind: str, relative_path: str, ext: str) -> str:
    """OUTPUT/_imagesieve/<kind>/<shard path><ext>: the whole name, so that x.tar and x.tar.gz differ."""
    return join(output_dir, WORK_DIR, kind, relative_path + ext)


def done_marker(output_dir: str, relative_path: str) -> str:
    return work_path(output_dir, "done", relative_path, ".json")


def publishing_record(output_dir: str, relative_path: str) -> str:
    """Where what a unit's run is about to publish is named, before it is (`storage.ours`)."""
    return work_path(output_dir, "publishing", relative_path, ".json")


def is_done(output_dir: str, relative_path: str, fingerprint: str, storage_options: dict | None = None) -> bool:
    """A shard (or folder chunk) is done when its marker exists, the input is the version the marker
    records (`fingerprint`; a shard changed since is redone), its removed list is there (the run's counts
    are read from it), and its output still has the recorded size (a file renamed but lost to a power
    cut before reaching the disk has not)."""
    marker = done_marker(output_dir, relative_path)
    store = storage_for(output_dir, storage_options)
    if not store.exists(marker):
        return False
    stats = read_json(marker, storage_options)
    if stats.get("input_fingerprint") != fingerprint:
        return False
    outputs = stats.get("kept_files") or {relative_path: stats.get("output_size")}
    if not store.exists(work_path(output_dir, "removed", relative_path, ".parquet")):  # its record, deleted since
        return False
    return all(store.isfile(p := join(output_dir, rel)) and store.size(p) == size for rel, size in outputs.items())


def holds_run(folder: str, storage_options: dict | None = None) -> bool:
    """Whether `folder` is an imagesieve run's folder: its `_imagesieve/` holds the lock a run takes there
    first, or its run record (a user's own folder of that name, empty or not, holds no run): see
    `run_folder_on_the_way`."""
    records = join(folder, WORK_DIR)
    store = storage_for(folder, storage_options)
    return any(store.exists(join(records, name)) for name in ("lock", "run.json"))


RESERVED = ("summary.json", "removed.parquet", WORK_DIR)  # a run's own names at the top of its output folder
COMPLETE = "complete.json"  # in a remove run's records: the run ended, every shard written and counted


def mark_running(output_dir: str, storage_options: dict | None = None) -> None:
    """A run starts changing its folder: until `mark_complete`, its outputs are not a whole dataset."""
    record = join(output_dir, WORK_DIR, COMPLETE)
    store = storage_for(output_dir, storage_options)
    if store.exists(record):
        store.delete_file(record)


def mark_complete(output_dir: str, storage_options: dict | None = None) -> None:
    write_json_atomic({"complete": True}, join(output_dir, WORK_DIR, COMPLETE), storage_options)


def is_clean_dataset(folder: str, root: str, storage_options: dict | None = None) -> bool:
    """Whether the run folder `folder`, met inside the input `root`, is a dataset to read rather than an
    earlier output of this input: the clean shards (or images) of a finished `remove` run made from
    input that does not overlap `root` (a batch deduplicated elsewhere, moved into the dataset). An
    output of this very input, or of input around it, is a copy of what the run reads anyway; a run
    folder that did not finish holds part of a dataset and is refused (`refuse_unfinished_run`)."""
    store = storage_for(folder, storage_options)
    if run_owner(folder, storage_options) != "remove":
        return False
    config = join(folder, WORK_DIR, "config.json")
    job = read_json(config, storage_options) if store.exists(config) else {}
    inputs = job.get("input_roots") or job.get("input")  # the folders and files it read (a list file's entries)
    if not inputs:
        return False
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if any(is_under(source, root) or is_under(root, source) for source in inputs):
        return False
    # a recorded input on another kind of storage than `root` (an s3:// batch, cleaned, met in a local
    # folder) overlaps nothing here, and is not looked up: this run may have no way to reach it
    gone = [source for source in inputs if is_remote(source) == is_remote(root)
            and not storage_for(source, storage_options).exists(source)]
    if gone:  # moved or deleted since: whether `folder` is a copy of this input cannot be told
        raise ValueError(f"{folder} holds the clean output of an earlier imagesieve run whose input {gone[0]} is no "
                         "longer there, so whether it copies this input cannot be told: if it is a dataset to "
                         f"read, delete {join(folder, WORK_DIR)}; if it is a copy of this input, move it out")
    refuse_unfinished_run(folder, storage_options)
    return True


def refuse_unfinished_run(folder: str, storage_options: dict | None = None) -> None:
    """A run's output folder read as input (a `remove` run's clean shards, a dedup's OUT/shards) must hold
    the whole of a finished run: one being written, or left by a run that was killed or failed, holds
    only the shards written so far, and reading it would silently read part of a dataset."""
    if not holds_run(folder, storage_options):
        return
    holder = live_holder(folder, storage_options)
    if holder is not None:
        raise ValueError(f"{folder} is being written by an imagesieve run ({holder}); read it once that run has "
                         "ended")
    complete = storage_for(folder, storage_options).exists(join(folder, WORK_DIR, COMPLETE))
    if run_owner(folder, storage_options) == "remove" and not complete:
        raise ValueError(f"{folder} holds the output of an imagesieve run that did not finish (killed, stopped by an "
                         "error, emptied by a `dedup --dry-run` whose lists had changed, or made by an imagesieve "
                         "that did not yet record a run's end): it may hold only part of the dataset; run that "
                         "command again (a dedup without --dry-run) to finish it, then read its output")


def walk_own(folder: str, nested: list[str] | None = None) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(folder)` (links not followed) that never enters a subfolder holding another run
    (`run_folder_on_the_way`; each one it leaves out is added to `nested`): a run's cleanups and listings
    of its folder leave a run nested in it alone."""
    for root, dirs, files in os.walk(folder):
        runs = [d for d in dirs if run_folder_on_the_way(os.path.join(root, d, "x"), root, holds_run, True)]
        dirs[:] = [d for d in dirs if d not in runs]
        if nested is not None:
            nested += [os.path.join(root, d) for d in runs]
        yield root, dirs, files


def nested_runs(folder: str, storage_options: dict | None = None) -> list[str]:
    """The run folders inside `folder` (the nearest ones: not those nested in them)."""
    if is_remote(folder):
        store = storage_for(folder, storage_options)
        listing = store.list_files(folder) if store.exists(folder) else []
        holds = listed_runs(listing)
        return sorted({run for p in listing if (run := run_folder_on_the_way(p, folder, holds, True))})
    found: list[str] = []
    for _ in walk_own(folder, found):
        pass
    return sorted(found)


def enclosing_runs(folder: str, storage_options: dict | None = None) -> list[str]:
    """The run folders that `folder` lies inside, nearest first."""
    if is_remote(folder):
        scheme, parts = folder.split("://", 1)[0], [p for p in folder.split("://", 1)[1].split("/") if p]
        above = [f"{scheme}://{'/'.join(parts[:k])}" for k in range(len(parts) - 1, 0, -1)]
    else:
        above, here = [], os.path.abspath(folder)
        while os.path.dirname(here) != here:
            here = os.path.dirname(here)
            above.append(here)
    return [f for f in above if holds_run(f, storage_options)]


# What find and dedup write at the top of their folder; a remove run writes anywhere in its own (its
# shards mirror the input's folders).
FIND_NAMES = ("shards", "hashes", "reference_hashes", "embeddings", "keypoints", "duplicates", "groups", "report")


def run_owner(folder: str, storage_options: dict | None = None) -> str | None:
    """The command whose run folder `folder` is: its run.json, or what it holds (`_owner_before_records`)."""
    record = join(folder, WORK_DIR, "run.json")
    if storage_for(folder, storage_options).exists(record):
        return read_json(record, storage_options).get("command")
    return _owner_before_records(folder, storage_options)


def _writes_at(outer: str, inner: str, storage_options: dict | None) -> bool:
    """Whether the run of folder `outer` writes where `inner` (a folder inside it) lies."""
    owner, top = run_owner(outer, storage_options), path_parts(inner)[len(path_parts(outer))]
    return owner not in ("find", "dedup") or top in FIND_NAMES or top == WORK_DIR


def is_dedups_shards(folder: str, storage_options: dict | None = None) -> bool:
    """Whether `folder` (a DEDUP/shards) is that dedup run's own: recorded as its part, or written before
    that record existed (then it has no removed.parquet of its own, as a separate remove run has)."""
    record = join(folder, WORK_DIR, "run.json")
    store = storage_for(folder, storage_options)
    claim = read_json(record, storage_options) if store.exists(record) else {}
    if "part_of" in claim:
        return claim["part_of"] == "dedup"
    return claim.get("command", "remove") == "remove" and not store.exists(join(folder, "removed.parquet"))


def live_holder(folder: str, storage_options: dict | None = None) -> str | None:
    """Who holds `folder`'s run lock now (None: no live run), asked without waiting; a shared lock taken
    for that moment is released at once."""
    lock = join(folder, WORK_DIR, "lock")
    if is_remote(folder):
        return storage_for(folder, storage_options).live_holder(lock)
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
    finally:
        os.close(fd)


def check_apart(output_dir: str, command: str, part_of: str | None = None,
                storage_options: dict | None = None) -> None:
    """Two runs never share a folder: a run into OUT is refused, naming the other folder, when OUT lies
    inside another run's folder or holds one, and that other run is live (it holds its lock: two runs
    would write and clean up over each other) or either run writes where the other lies (a remove run
    at DEDUP/shards would be taken over by the dedup's next run). Checked with OUT's lock held, so of two
    runs started together at least one sees the other. `part_of`: the folder of the run this one is a
    step of (dedup's remove into DEDUP/shards), never taken for another."""
    so = storage_options
    for outer in enclosing_runs(output_dir, so):
        if part_of is not None and is_under(outer, part_of) and is_under(part_of, outer):
            continue
        if (holder := live_holder(outer, so)) is not None:
            raise OutputInUseError(f"{output_dir} lies inside {outer}, which another imagesieve run is writing "
                                   f"({holder}); wait for it to finish, or choose an output folder outside it")
        if _writes_at(outer, output_dir, so):
            raise ValueError(f"{output_dir} lies inside {outer}, the folder of an imagesieve "
                             f"{run_owner(outer, so) or 'earlier'} run, where that run writes; choose an output "
                             "folder outside it")
    inners = nested_runs(output_dir, so)
    for inner in inners:
        if (holder := live_holder(inner, so)) is not None:
            raise OutputInUseError(f"{inner}, inside the output folder {output_dir}, is being written by another "
                                   f"imagesieve run ({holder}); wait for it to finish, or choose another output folder")
        own = command == "dedup" and is_under(inner, join(output_dir, "shards")) and \
            is_under(join(output_dir, "shards"), inner) and is_dedups_shards(inner, so)
        if own:
            inners += nested_runs(inner, so)  # dedup's remove writes anywhere in its shards folder
        elif command not in ("find", "dedup") or _writes_at(output_dir, inner, so):
            raise ValueError(f"{inner}, inside the output folder {output_dir}, holds an imagesieve "
                             f"{run_owner(inner, so) or 'earlier'} run of its own, where this {command} run would "
                             "write; move it out, or choose another output folder")


def remove_stale_temp_files(folder: str, storage_options: dict | None = None) -> list[str]:
    """Delete the temp files a killed run left under `folder`; returns their paths.

    Only regular files named by `temp_name` are removed (never folders, never through a symlink),
    and only by a run that holds the folder's lock, so no live writer owns them; never inside a run
    folder nested in `folder` (`walk_own`): its temp files are that run's, maybe live.
    """
    if is_remote(folder):
        return storage_for(folder, storage_options).remove_stale_temp_files(folder)
    removed = []
    for root, _, files in walk_own(folder):
        for name in files:
            path = os.path.join(root, name)
            if is_temp_name(name) and stat.S_ISREG(os.lstat(path).st_mode):
                os.remove(path)
                removed.append(path)
    return removed


@contextmanager
def run_lock(output_dir: str, command: str, storage_options: dict | None = None,
             part_of: str | None = None) -> Iterator[None]:
    """Hold OUTPUT/_imagesieve/lock for a whole run: a second run into the same folder fails at once
    (two runs would overwrite each other's shards and lists). The kernel releases the lock when the
    process dies, however it dies, so a killed run never leaves the folder locked. On object storage
    the lock is an object (see `RemoteStorage.lock`). The folder belongs to one command
    (`claim_for`): another command's folder is refused, and one not apart from every other run's
    (`check_apart`; `part_of`: the folder of the run this one is a step of)."""
    if is_remote(output_dir):
        lock = join(output_dir, WORK_DIR, "lock")
        with storage_for(output_dir, storage_options).lock(output_dir, command, lock):
            claim_for(output_dir, command, storage_options, part_of)
            yield
        return
    with _local_lock(output_dir, command):
        claim_for(output_dir, command, storage_options, part_of)
        yield


# A dedup folder is a find folder with shards, removed.parquet and a report added: dedup may take over
# a find folder (it reuses its hash tables); nothing else changes hands.
_TAKES_OVER = {("find", "dedup")}


def claim_for(output_dir: str, command: str, storage_options: dict | None = None, part_of: str | None = None) -> None:
    """Record in OUTPUT/_imagesieve/run.json which command owns the folder (and, for dedup's remove into
    DEDUP/shards, that it is dedup's: `is_dedups_shards`), or refuse a folder that holds another command's
    run (`find` into a `dedup` folder would overwrite its lists and break its reruns; `remove` into a
    `find` folder would overwrite its summary.json), or that is not apart from other runs (`check_apart`):
    all before the record is written."""
    record = join(output_dir, WORK_DIR, "run.json")
    store = storage_for(output_dir, storage_options)
    claim = read_json(record, storage_options) if store.exists(record) else {}
    owner = claim.get("command") if claim else _owner_before_records(output_dir, storage_options)
    if owner not in (None, command) and (owner, command) not in _TAKES_OVER:
        raise ValueError(f"{output_dir} holds the output of an imagesieve {owner} run; `imagesieve {command}` "
                         "cannot write into it: choose another output folder")
    if owner is None:
        refuse_foreign_files(output_dir, storage_options)
    check_apart(output_dir, command, part_of, storage_options)
    mine = {"command": command, **({"part_of": "dedup"} if part_of is not None else {})}
    if owner != command or (part_of is not None and claim != mine):
        write_json_atomic(mine, record, storage_options)


def refuse_foreign_files(folder: str, storage_options: dict | None = None, ours: Iterable[str] = (WORK_DIR,),
                         who: str = "no imagesieve run wrote", advice: str = "choose a new or empty output folder"
                         ) -> None:
    """A folder about to be written must hold nothing but the names at its top that are `ours` (a run's
    records; a finder's lists; none for a report), and our temp files (a write in progress, another
    worker's in a pipeline: cleaned up, never a user's): a run writes `summary.json`, `shards/00000.tar`,
    ... by name, and would replace a user's files of those names (another dataset given as OUT by
    mistake). Refused naming the folder and what it holds; `who` and `advice` word the refusal."""
    if is_remote(folder):  # (listed under the scheme's own name: s3a:// is listed as s3://)
        top = normal_url(folder).rstrip("/") + "/"
        found = [f for f in storage_for(folder, storage_options).list_files(folder)
                 if normal_url(f).removeprefix(top).split("/")[0] not in ours]
    elif os.path.isdir(folder):
        found = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name not in ours)
    else:
        return
    found = [f for f in found if not is_temp_name(posixpath.basename(f.rstrip("/")))]
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ValueError(f"{folder} already holds files that {who} ({shown}); imagesieve never replaces files it "
                         f"did not create: {advice}")


def _owner_before_records(output_dir: str, storage_options: dict | None) -> str | None:
    """The command that made a folder written before run records existed, from what it holds."""
    store = storage_for(output_dir, storage_options)
    summary = join(output_dir, "summary.json")
    try:
        made_by_a_run = store.exists(summary) and "config" in read_json(summary, storage_options)
    except ValueError:
        made_by_a_run = False  # a file of the user's: `refuse_foreign_files` names it
    if made_by_a_run:
        return "dedup" if store.exists(join(output_dir, "shards")) else "find"
    if store.exists(join(output_dir, WORK_DIR, "done")):
        return "remove"
    return None


def check_output_dir(output_dir: str) -> None:
    """Create the output folder, or say why it cannot be written (a URL is checked when it is locked)."""
    if is_remote(output_dir):
        return
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"output {output_dir} exists and is not a folder")
    os.makedirs(output_dir, exist_ok=True)
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {output_dir} is not writable")


@contextmanager
def removed_if_refused(output_dir: str) -> Iterator[None]:
    """A run refused before it wrote anything leaves no output folder behind: when `output_dir` did not
    exist before and, on an error, holds nothing but the run's own records (lock, run.json), those and
    the folders are removed (object storage: left as is)."""
    existed = is_remote(output_dir) or os.path.lexists(output_dir)
    records_existed = is_remote(output_dir) or os.path.lexists(os.path.join(output_dir, WORK_DIR))
    before = set(os.listdir(output_dir)) if existed and not records_existed and os.path.isdir(output_dir) else set()
    try:
        yield
    except BaseException:
        if not existed:
            _remove_bare_run_folder(output_dir)
        elif not records_existed and _listing(output_dir) - {WORK_DIR} == before:
            _remove_bare_run_folder(output_dir, keep_folder=True)  # refused in a user's folder: only our records go
        raise


def _listing(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def _remove_bare_run_folder(output_dir: str, keep_folder: bool = False) -> None:
    work = os.path.join(output_dir, WORK_DIR)
    try:
        if not keep_folder and os.listdir(output_dir) not in ([], [WORK_DIR]):
            return
        records = os.listdir(work) if os.path.isdir(work) else []
        if not set(records) <= {"lock", "run.json"}:
            return
        for name in records:
            os.remove(os.path.join(work, name))
        if os.path.isdir(work):
            os.rmdir(work)
        if not keep_folder:
            os.rmdir(output_dir)
    except OSError:
        pass  # something else is there now: leave it all


@contextmanager
def _local_lock(output_dir: str, command: str) -> Iterator[None]:
    work = os.path.join(output_dir, WORK_DIR)
    os.makedirs(work, exist_ok=True)
    if os.path.islink(work):
        raise OSError(f"{work} is a symlink; imagesieve never writes through a link in its output folder: remove it")
    fd = os.open(os.path.join(work, "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise OutputInUseError(f"{output_dir} is being written by another imagesieve run ({holder}); wait for "
                               "it to finish, or choose another output folder") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"imagesieve {command}, pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def naming_errors(path: str) -> Iterator[None]:
    """An OS error while writing `path` (a full disk, a lost mount) names the file: ENOSPC alone does not."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, f"{exc.strerror or exc} while writing {path}") from exc


def write_parquet_atomic(table: pa.Table, path: str, storage_options: dict | None = None,
                         row_group_size: int | None = None, use_dictionary: bool = True,
                         mode_of: str | None = None) -> None:
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size,
                                                  use_dictionary=use_dictionary), storage_options, mode_of)


def write_text_atomic(text: str, path: str, storage_options: dict | None = None) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), storage_options)


def write_bytes_atomic(data: bytes, path: str, storage_options: dict | None = None,
                       mode_of: str | None = None) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data), storage_options, mode_of)


def make_folder(folder: str) -> None:
    """`os.makedirs`, except that below a run folder (one holding `_imagesieve/lock`) no component may be
    a symlink: a link planted in OUT (`out/cats -> /victim`) would have the run write through it. Nothing
    for a URL: object storage has no folders (a prefix exists once an object lies under it)."""
    if is_remote(folder):
        return
    folder = os.path.abspath(folder or ".")
    below = []
    here = folder
    while not os.path.isfile(os.path.join(here, WORK_DIR, "lock")):
        parent = os.path.dirname(here)
        if parent == here:  # not inside a run folder
            os.makedirs(folder, exist_ok=True)
            return
        below.append(here)
        here = parent
    for path in reversed(below):
        try:
            os.mkdir(path)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise OSError(f"{path} is a symlink or a file inside the output folder {here}; imagesieve never "
                              "writes through a link there: remove it, or choose another output folder") from None


def current_umask() -> int:
    """The process umask, read without setting it: `os.umask` would, for a moment, set it for every thread."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # elsewhere: set a narrow one for that moment, never a wider one
    os.umask(mask)
    return mask


def keep_mode_of(source: str, path: str) -> None:
    """Give `path` the permission bits of the input file it copies, never wider than the umask allows and
    without setuid/setgid/sticky: a 0600 input stays 0600, and a copy never runs as its input's owner."""
    if not is_remote(source) and os.path.isfile(source):
        os.chmod(path, stat.S_IMODE(os.stat(source).st_mode) & 0o777 & ~current_umask())


def narrow_mode(folder: str, source: str, umask: int | None = None) -> None:
    """Take from `folder` the permission bits the input folder `source` (or the umask) denies; the owner
    keeps rwx, to write. An output folder holding copies of what a 0700 input folder guards must not
    let other users in. Nothing when `source` is on object storage: it has no permission bits."""
    if is_remote(source):
        return
    try:
        want = stat.S_IMODE(os.stat(source).st_mode) & ~(current_umask() if umask is None else umask) | 0o700
        have = stat.S_IMODE(os.stat(folder).st_mode)
        if have & 0o777 & ~want:
            os.chmod(folder, have & (want | 0o7000))
    except FileNotFoundError:
        return


def narrow_to_files(folder: str, paths: list[str]) -> None:
    """Close `folder` (an output folder) to each class of users (group, other) that some input file in
    `paths` does not let read it: what a run derives from a private file (hash tables, ID lists, the
    report's thumbnails and captions) is no more open than the file. Copies keep their own modes
    (`keep_mode_of`). Local paths only; the folder is only ever narrowed."""
    if is_remote(folder):
        return
    closed = 0
    for path in paths:
        if is_remote(path):
            return
        unreadable = ~os.stat(path).st_mode
        closed |= (0o070 if unreadable & 0o040 else 0) | (0o007 if unreadable & 0o004 else 0)
        if closed == 0o077:
            break
    have = stat.S_IMODE(os.stat(folder).st_mode)
    if have & closed:
        os.chmod(folder, have & ~closed)


def mirror_folders(path: str, source: str, relative: str) -> None:
    """Make the folder of output file `path`, the copy of input `source` listed as `relative` (its path
    from the input root), each folder from the output root down no more open than the input folder it
    mirrors (`narrow_mode`)."""
    if is_remote(path):
        return
    make_folder(os.path.dirname(path))
    if is_remote(source) or not os.path.abspath(source).endswith(os.sep + relative):
        return
    folder, src, umask = os.path.dirname(path), os.path.dirname(os.path.abspath(source)), current_umask()
    for _ in range(relative.count(os.sep) + 1):
        narrow_mode(folder, src, umask)
        folder, src = os.path.dirname(folder), os.path.dirname(src)


def write_atomic(path: str, write: Callable[[str], object], storage_options: dict | None = None,
                 mode_of: str | None = None) -> None:
    """write(temp path), then rename the temp file to `path`; never a partial file under `path`.
    A URL is written to a local spool file, then published (`RemoteStorage.publish`). With `mode_of`,
    the file gets that input file's permission bits."""
    if is_remote(path):
        with storage_for(path, storage_options).writable(path) as local:
            write_atomic(local, write, mode_of=mode_of)
        return
    make_folder(os.path.dirname(path))
    tmp = temp_name(path)
    try:
        with naming_errors(path):
            write(tmp)
            if mode_of is not None:
                keep_mode_of(mode_of, tmp)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(data: dict[str, Any], path: str, storage_options: dict | None = None,
                      mode_of: str | None = None) -> None:
    text = json.dumps(data, indent=2, sort_keys=True)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), storage_options, mode_of)


def read_json(path: str, storage_options: dict | None = None) -> dict[str, Any]:
    """A JSON object imagesieve wrote; anything else is an error naming the file."""
    try:
        if is_remote(path):
            data = json.loads(storage_for(path, storage_options).read_bytes(path))
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON file imagesieve wrote ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON file imagesieve wrote (not an object)")
    return data


def parquet_files(folder: str, skip_prefixes: tuple[str, ...] = (".",)) -> list[str]:
    """Every `*.parquet` under `folder`, recursively, sorted; names starting with `skip_prefixes`
    (our hidden temp files) left out."""
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                  if name.endswith(".parquet") and not name.startswith(skip_prefixes))

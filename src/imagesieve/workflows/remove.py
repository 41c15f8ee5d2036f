"""The removal workflow: shards in, shards without the listed duplicates out, nothing lost.

list shards -> skip those already done -> read -> drop listed IDs -> write -> check the counts.
"""

from __future__ import annotations

import filecmp
import os
import time
from dataclasses import asdict, dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.executors.base import BaseExecutor
from imagesieve.pipeline.inputs import (
    InputUnit,
    check_cache_apart,
    check_removed_path,
    check_sources_apart,
    input_files_and_folders,
    input_roots,
    input_units,
    other_files,
)
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.stages.io import ImageWriterStage
from imagesieve.stages.io.folder import ImageFolderWriterStage, place_file
from imagesieve.stages.io.sidecar import sidecar_path, stats_path
from imagesieve.stages.io.writer import REMOVED_SCHEMA, AccountingError, check_accounting
from imagesieve.storage import (
    as_given,
    join,
    on_local_file_system,
    read_table,
    same_file_system,
    storage_for,
    supports_hard_links,
)
from imagesieve.storage.local import file_fingerprint
from imagesieve.storage.ours import refuse_replacing_unknown_copy
from imagesieve.storage.runfolder import (
    WORK_DIR,
    check_output_dir,
    done_marker,
    is_done,
    mark_complete,
    mark_running,
    mirror_folders,
    narrow_to_files,
    read_json,
    remove_stale_temp_files,
    removed_if_refused,
    run_lock,
    work_path,
    write_json_atomic,
    write_parquet_atomic,
)
from imagesieve.tar.read import iter_samples
from imagesieve.workflows.common import absolute_paths, given_paths, reader_for, run_on_units
from imagesieve.workflows.id_lists import check_curator_stems, check_ids_match, resolve_id_scheme
from imagesieve.workflows.previous_outputs import (
    delete_if_ours,
    discard_killed_runs_outputs,
    discard_units,
    recorded_units,
)


@dataclass
class RemoveSummary:
    shards: int
    shards_skipped: int
    samples_in: int
    kept: int
    removed: int
    ids_listed: int
    ids_not_found: int
    elapsed_seconds: float
    notes: list[str]
    loose_members: int = 0  # tar members that belong to no sample, copied unchanged
    id_scheme: str = "key"  # what the IDs named: sample keys, or NeMo Curator reader IDs ("curator")

    def lines(self) -> list[str]:
        return [
            f"shards           {self.shards} ({self.shards_skipped} already done, skipped)",
            f"samples in       {self.samples_in}",
            f"kept             {self.kept}",
            f"removed          {self.removed}",
            f"IDs listed       {self.ids_listed} ({self.ids_not_found} not found in the input)",
            *(["ID scheme        NeMo Curator reader IDs, mapped to samples by shard and position"]
              if self.id_scheme == "curator" else []),
            *([f"other members    {self.loose_members} (in no sample, e.g. README or ._x.jpg; copied unchanged)"]
              if self.loose_members else []),
            f"elapsed          {self.elapsed_seconds:.1f} s",
        ]


def check_same_run(output_dir: str, config: dict, storage_options: dict | None = None,
                   replace_changed: bool = False) -> None:
    """A rerun resumes only the same job: other IDs or input in a folder with finished shards would
    mix two runs' outputs. Records the job in OUTPUT/_imagesieve/config.json. With `replace_changed`
    (dedup, which owns its shards folder) the earlier run's recorded outputs are deleted instead
    (local folders only, for now)."""
    path = join(output_dir, WORK_DIR, "config.json")
    store = storage_for(output_dir, storage_options)
    if store.exists(path):
        previous = read_json(path, storage_options)
        changed = [k for k in ("command", "input", "id_field", "ids_fingerprint")
                   if previous.get(k) != config[k]]
        if previous.get("id_scheme", "key") != config.get("id_scheme", "key"):  # runs before it was recorded: keys
            changed.append("id_scheme")
        if previous.get("link", False) != config.get("link", False):  # links for copies: what a user edits in OUT
            changed.append("link setting")                              # would reach INPUT

        if changed and store.isdir(join(output_dir, WORK_DIR, "done")):
            if not replace_changed:
                raise ValueError(f"{output_dir} holds a run with another {', '.join(changed)}; "
                                 "use a new output folder, or delete this one to start over")
            discard_units(output_dir, recorded_units(output_dir, storage_options), storage_options)
    write_json_atomic(config, path, storage_options)


def remove_duplicates(input_path: str | list[str], output_dir: str, duplicates_dir: str, id_field: str = "id",
                      executor: BaseExecutor | None = None, progress: bool = False, fsync: bool = False,
                      cache_dir: str | None = None, check_id_folder: bool = True,
                      removed_path: str | None = None, link: bool = False,
                      exclude: str | None = None, storage_options: dict | None = None,
                      replace_changed: bool = False, id_scheme: str = "auto",
                      allow_unmatched_ids: bool = False) -> RemoveSummary:
    """Copy every shard of `input_path` to `output_dir` without the samples listed in `duplicates_dir`.

    `id_scheme` says what the IDs name (see `ImageDuplicatesRemovalStage`); "auto" is decided once for
    the run (`id_lists.resolve_id_scheme`). A list of which no ID names a sample of the run is refused
    before anything is written to `output_dir` (`UnmatchedIdsError`, `id_lists.check_ids_match`),
    unless `allow_unmatched_ids` (a run over part of the shards the list was made for).

    The list of removed samples goes to `removed_path` (default OUTPUT/removed.parquet). The input may
    not overlap `exclude` (default `output_dir`; `dedup` passes its whole output folder, of whose run this
    one is then a step: `runfolder.check_apart`). Outputs of
    shards that have left the input since an earlier run are deleted (only what its records name).
    Input, IDs and output may be URLs (`s3://...`), reached with `storage_options`."""
    input_path, output_dir, duplicates_dir = given_paths(input_path), as_given(output_dir), as_given(duplicates_dir)
    started = time.monotonic()
    so = storage_options
    check_sources_apart(output_dir, {"ID folder": duplicates_dir}, so)
    units = [replace(unit, sidecars=True) for unit in input_units(input_path, output_dir, exclude, so)]
    check_cache_apart(cache_dir, input_path, exclude or output_dir, {"ID folder": duplicates_dir})
    if removed_path is not None:
        check_removed_path(removed_path, input_path, so)
    check_link(units, link, output_dir)
    if id_scheme == "curator" and units[0].is_folder_chunk:
        raise ValueError(f"--id-scheme curator names samples of tar shards by position ({{tar stem}}_{{index:06d}}); "
                         f"{units[0].root} is an image folder, whose IDs are file paths: use --id-scheme key")
    refuse_clashing_sidecars(units, output_dir, removed_path, so)
    folder = units[0].is_folder_chunk
    if folder and not on_local_file_system(output_dir):
        raise ValueError(f"{output_dir}: writing an image folder to object storage is not supported yet; write it "
                         "to a local folder and upload it")
    # the ID list is read and checked against the input before OUT is touched: a list refused here
    # leaves OUT as it was
    removal = ImageDuplicatesRemovalStage(removal_parquets_dir=duplicates_dir, duplicate_id_field=id_field,
                                          cache_dir=cache_dir, check_id_folder=check_id_folder,
                                          storage_options=so, id_scheme=id_scheme)
    removal.setup()  # fail fast on a bad ID folder, before any worker starts
    check_integer_ids(removal, units, so)
    removal.use_id_scheme(resolve_id_scheme(removal, units, so))
    check_curator_stems(removal, units)
    if not allow_unmatched_ids:
        check_ids_match(removal, units, so)
    with removed_if_refused(output_dir):
        check_output_dir(output_dir)
        with run_lock(output_dir, "remove", so, part_of=exclude):  # dedup's remove into DEDUP/shards
            mark_running(output_dir, so)
            remove_stale_temp_files(output_dir, so)
            narrow_to_files(exclude or output_dir, input_files_and_folders(units))
            job = {"command": "remove", "input": absolute_paths(input_path),
                   "input_roots": absolute_paths(input_roots(input_path)), "id_field": id_field,
                   "ids_fingerprint": removal.ids_digest, "id_scheme": removal.id_scheme,
                   "removal_stage": removal.config(), "link": link}
            check_same_run(output_dir, job, so, replace_changed)
            current = {unit.rel for unit in units}
            discard_units(output_dir, [rel for rel in recorded_units(output_dir, so) if rel not in current], so)

            todo = [unit for unit in units if not is_done(output_dir, unit.rel, unit.fingerprint, so)]
            redo = {unit.rel for unit in todo}
            discard_killed_runs_outputs(output_dir, redo | (set(recorded_units(output_dir, so, "publishing")) -
                                                            current), so)
            discard_units(output_dir, list(redo), so)  # a redone folder chunk may keep fewer files
            writer = ImageFolderWriterStage(output_dir=output_dir, link=link) if folder else \
                ImageWriterStage(output_dir=output_dir, fsync=fsync, storage_options=so)
            run_on_units("remove", [reader_for(units, so), removal, writer], todo, len(units), executor, progress)
            others = copy_other_files(units[0].root, output_dir) if folder else 0

            summary = finish_run(output_dir, units, len(units) - len(todo), removal.listed_ids, removal.notes,
                                 started, removed_path or join(output_dir, "removed.parquet"), so)
            summary.loose_members += others
            summary.id_scheme = removal.id_scheme
            write_json_atomic(asdict(summary), join(output_dir, "summary.json"), so)
            mark_complete(output_dir, so)
    return summary


def refuse_clashing_sidecars(units: list[InputUnit], output_dir: str, removed_path: str | None,
                             storage_options: dict | None = None) -> None:
    """A shard's img2dataset tables are written beside its output shard: one that would land on the run's
    own removed list or summary (the table `removed.parquet` of a shard `removed.tar`) is refused before
    anything is written, naming both; one would silently replace the other."""
    own = {removed_path or join(output_dir, "removed.parquet"), join(output_dir, "summary.json")}
    for unit in units:
        if unit.is_folder_chunk:
            return
        for table_of in (sidecar_path, stats_path):
            target = join(output_dir, table_of(unit.rel))
            if target in own and storage_for(unit.paths[0], storage_options).exists(table_of(unit.paths[0])):
                raise ValueError(f"{unit.paths[0]}: its img2dataset table would be written to {target}, where "
                                 "this run writes its own list; rename the shard (and its tables), or "
                                 "write the output to a subfolder")


def check_link(units: list[InputUnit], link: bool, output_dir: str | None = None) -> None:
    """`--link` means something only for image folders, and only within one file system: say so before
    any work rather than ignore it or fail after the search."""
    if link and not units[0].is_folder_chunk:
        raise ValueError("link=True (--link) hard-links the kept files of an image folder; the input holds tar shards, "
                         "which are always written as new shards")
    if link and output_dir is not None and supports_hard_links(output_dir) and \
            not same_file_system(output_dir, units[0].root):
        raise ValueError(f"--link hard-links files, which needs {output_dir} on the same file system as the input "
                         f"{units[0].root}; choose an output folder there, or copy (leave out --link)")


def copy_other_files(root: str, output_dir: str) -> int:
    """The files of an image folder that are not images (captions, licences) go to the output unchanged:
    nothing in the input is dropped silently. A copy is made again when its bytes differ from the input's
    (an edit of the same length included), over nothing but ours (`refuse_replacing_unknown_copy`: the
    version recorded, or the input's bytes). They are recorded in OUT/_imagesieve/other_files.json (path
    -> version), so that one that has left the input since an earlier run leaves the output too (only
    still as we wrote it). Returns how many."""
    record = os.path.join(output_dir, WORK_DIR, "other_files.json")
    placing = os.path.join(output_dir, WORK_DIR, "other_files.placing.json")  # a killed run's copies are ours
    previous = read_json(record) if os.path.exists(record) else {}
    named = set(read_json(placing).get("placing", [])) if os.path.exists(placing) else set()
    files = other_files(root)
    for rel in files:  # all checked before any is named or written
        refuse_replacing_unknown_copy(os.path.join(output_dir, rel), os.path.join(root, rel), previous.get(rel),
                                      named=rel in named)
    write_json_atomic({"placing": sorted(named.union(files))}, placing)
    copied = {}
    for rel in files:
        target, source = os.path.join(output_dir, rel), os.path.join(root, rel)
        mirror_folders(target, source, rel)
        if not (os.path.isfile(target) and filecmp.cmp(target, source, shallow=False)):
            place_file(source, target, link=False)
        copied[rel] = file_fingerprint(os.stat(target))
    for rel, was in previous.items():
        if rel not in copied:
            delete_if_ours(output_dir, rel, was if isinstance(was, int) else None,
                           version=was if isinstance(was, str) else None)
    write_json_atomic(copied, record)
    os.remove(placing)
    return len(files)


def check_integer_ids(removal: ImageDuplicatesRemovalStage, units: list[InputUnit],
                      storage_options: dict | None = None) -> None:
    """Integer IDs lose the leading zeros of keys such as 00000123 (img2dataset's): none would match,
    and the run would remove nothing while looking successful. Refuse that case up front."""
    if not any("holds integers" in note for note in removal.notes) or units[0].is_folder_chunk:
        return
    shard = units[0].paths[0]
    with storage_for(shard, storage_options).local_copy(shard) as local:
        sample = next(iter_samples(local, loose=[]), None)
    if sample is not None and len(sample.key) > 1 and sample.key.isdigit() and sample.key.startswith("0"):
        raise ValueError(f"the ID files under {removal.removal_parquets_dir} store IDs as integers, but keys such "
                         f"as {sample.key!r} (in {shard}) have leading zeros, so no ID could match. "
                         "Write the IDs as strings, exactly as the keys are spelled")


def check_removed_gone(output_dir: str, removed_ids: list[str]) -> None:
    """An image folder's output is a tree of files, which a file left from an earlier run (one the user
    replaced) can hold besides what this run wrote: a removed image still there would make the output
    disagree with removed.parquet, so the run fails, naming it."""
    for image_id in removed_ids:
        path = os.path.join(output_dir, image_id)
        if os.path.lexists(path):
            raise AccountingError(f"{path}: {image_id} is listed as removed but a file by that name is still in the "
                                  "output (not one this run wrote or may delete: replaced since an earlier run?); "
                                  "move or delete it, then rerun")


def finish_run(output_dir: str, units: list[InputUnit], shards_skipped: int, ids_listed: int,
               notes: list[str], started: float, removed_path: str,
               storage_options: dict | None = None) -> RemoveSummary:
    """Add up the per-shard counts, merge the removed lists, and check that nothing was lost."""
    samples_in = kept = removed = loose = 0
    store = storage_for(output_dir, storage_options)
    for unit in units:
        marker = done_marker(output_dir, unit.rel)
        if not store.exists(marker):
            raise AccountingError(f"{unit.paths[0]}: no output was recorded for this shard")
        stats = read_json(marker, storage_options)
        samples_in, kept, removed = (samples_in + stats["samples_in"], kept + stats["kept"],
                                     removed + stats["removed"])
        loose += len(stats.get("loose_members", []))
    parts = [read_table(work_path(output_dir, "removed", unit.rel, ".parquet"), storage_options) for unit in units]
    removed_table = pa.concat_tables(parts) if parts else REMOVED_SCHEMA.empty_table()
    check_accounting("whole run", samples_in, kept, removed)
    if removed_table.num_rows != removed:
        raise AccountingError(f"removed lists hold {removed_table.num_rows} rows but shards report {removed}")
    if units and units[0].is_folder_chunk:
        check_removed_gone(output_dir, removed_table.column("id").to_pylist())
    distinct_removed = len(pc.unique(removed_table.column("id")))
    if distinct_removed > ids_listed:
        raise AccountingError(f"{distinct_removed} distinct IDs removed but only {ids_listed} listed")
    write_parquet_atomic(removed_table, removed_path, storage_options)
    return RemoveSummary(shards=len(units), shards_skipped=shards_skipped, samples_in=samples_in, kept=kept,
                         removed=removed,
                         ids_listed=ids_listed, ids_not_found=ids_listed - distinct_removed,
                         elapsed_seconds=time.monotonic() - started, notes=notes, loose_members=loose)

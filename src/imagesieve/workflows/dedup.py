"""One run from shards to clean shards: find, then remove, then the report, in one output folder.

OUTPUT/shards/           the input shards without the duplicates (byte-for-byte; resumable); for an
                         image folder, the same tree of files without the duplicates
OUTPUT/duplicates/       the IDs removed (NeMo Curator's layout)
OUTPUT/groups/           every duplicate group: kept member, removed ones, method, distance
OUTPUT/hashes/           per-shard hashes, reused by reruns
OUTPUT/removed.parquet   id, shard, reason of every removed sample
OUTPUT/report/index.html the report
OUTPUT/summary.json      counts and time per phase

Each phase resumes on a rerun (hash tables and finished shards are reused), so a killed run, run
again with the same arguments, ends with the same output as one that was never interrupted.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor
from imagesieve.pipeline.inputs import check_cache_apart, check_input_first, input_units
from imagesieve.progress import phase
from imagesieve.report import write_report
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.storage import as_given, is_link, join, makedirs, storage_for
from imagesieve.storage.runfolder import (
    WORK_DIR,
    mark_running,
    read_json,
    removed_if_refused,
    run_lock,
    write_json_atomic,
)
from imagesieve.workflows.common import given_paths, sources_read
from imagesieve.workflows.copy_find import CopyConfig, find_copies_in_locked_folder
from imagesieve.workflows.find import FindConfig, find_in_locked_folder
from imagesieve.workflows.previous_outputs import discard_units, recorded_units
from imagesieve.workflows.remove import check_link, remove_duplicates
from imagesieve.workflows.semantic_find import SemanticConfig, find_semantic_in_locked_folder, refuse_object_storage


@dataclass
class DedupSummary:
    images: int
    groups: int
    duplicates: int
    by_method: dict[str, int]
    samples_in: int | None  # None on a dry run: nothing was copied
    kept: int | None
    removed: int | None
    output: str
    dry_run: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    def lines(self) -> list[str]:
        methods = ", ".join(f"{k} {v:,}" for k, v in sorted(self.by_method.items())) or "none"
        rows = [("images", f"{self.images:,}"), ("duplicate groups", f"{self.groups:,}"),
                ("duplicates", f"{self.duplicates:,} ({methods})")]
        if self.dry_run:
            rows.append(("removed", "nothing (dry run): the shards were not written"))
        else:
            rows += [("kept", f"{self.kept:,}"), ("removed", f"{self.removed:,}")]
        rows += [(f"time: {name}", f"{seconds:.1f} s") for name, seconds in self.seconds.items()]
        rows += [("report", join(self.output, "report", "index.html"))]
        if not self.dry_run:
            rows += [("clean shards", join(self.output, "shards")),
                     ("removed list", join(self.output, "removed.parquet"))]
        return [f"{label:<18}{value}" for label, value in rows]


def dedup(input_path: str | list[str], output_dir: str,
          config: FindConfig | SemanticConfig | CopyConfig | None = None, reference: str | list[str] | None = None,
          executor: BaseExecutor | None = None, progress: bool = False,
          dry_run: bool = False, cache_dir: str | None = None, link: bool = False,
          storage_options: dict | None = None) -> DedupSummary:
    """Find the duplicates of `input_path`, copy its shards without them, and write the report.
    Input and output may be URLs (`s3://...`), reached with `storage_options`."""
    input_path, output_dir = given_paths(input_path), as_given(output_dir)
    if isinstance(config, SemanticConfig | CopyConfig):
        refuse_object_storage(input_path, output_dir, "semantic" if isinstance(config, SemanticConfig) else "copy")
    check_input_first(input_path, output_dir, storage_options, sources_read(config))
    check_cache_apart(cache_dir, input_path, output_dir, {"reference": reference})
    if is_link(join(output_dir, "shards")):
        raise ValueError(f"{join(output_dir, 'shards')} is a symlink; imagesieve never writes through a link "
                         "in its output folder: remove it, or choose another output folder")
    if link:
        check_link(input_units(input_path, output_dir, output_dir, storage_options), link, output_dir)
    with removed_if_refused(output_dir):
        makedirs(output_dir)
        with run_lock(output_dir, "dedup", storage_options):
            return _dedup(input_path, output_dir, config or FindConfig(), reference, executor or LocalExecutor(),
                          progress, dry_run, cache_dir, link, storage_options)


# what a setting added later meant in runs recorded before it (pHash pairs were not confirmed by dHash)
SETTINGS_BEFORE_THEY_EXISTED = {"confirm": False}


def check_same_settings(output_dir: str, config: FindConfig | SemanticConfig | CopyConfig,
                        storage_options: dict | None = None) -> None:
    """A rerun into a folder whose shards were written with other find settings would overwrite the
    duplicate lists and then be refused by `remove`, leaving lists and shards that disagree: refuse
    it before anything is written."""
    summary = join(output_dir, "summary.json")
    store = storage_for(output_dir, storage_options)
    if not (store.exists(summary) and store.isdir(join(output_dir, "shards", WORK_DIR, "done"))):
        return
    previous = {**SETTINGS_BEFORE_THEY_EXISTED, **(read_json(summary, storage_options).get("config") or {})}
    current = json.loads(json.dumps(asdict(config)))
    changed = sorted(k for k in current if k != "json_fields" and k in previous and previous[k] != current[k])
    method = "semantic" if isinstance(config, SemanticConfig) else config.method
    if changed or previous.get("method") != method:
        raise ValueError(f"{output_dir} holds a dedup run made with other settings ({', '.join(changed) or 'method'});"
                         " use a new output folder, or delete this one to start over")


def discard_stale_shards(output_dir: str, storage_options: dict | None = None) -> None:
    """A dry run after a real one: shards written from duplicate lists that have changed since would
    disagree with the new lists and the report, so what that run recorded is deleted."""
    shards = join(output_dir, "shards")
    config = join(shards, WORK_DIR, "config.json")
    store = storage_for(output_dir, storage_options)
    if not store.exists(config):
        return
    duplicates = join(output_dir, "duplicates")
    current = ImageDuplicatesRemovalStage(removal_parquets_dir=duplicates, storage_options=storage_options).ids_digest
    if read_json(config, storage_options).get("ids_fingerprint") != current:
        mark_running(shards, storage_options)  # from here on OUT/shards is no finished run's output (input)
        summary = join(shards, "summary.json")
        if store.exists(summary):
            store.delete_file(summary)
        discard_units(shards, recorded_units(shards, storage_options), storage_options)
        removed = join(output_dir, "removed.parquet")
        if store.isfile(removed):
            store.delete_file(removed)


def _dedup(input_path: str | list[str], output_dir: str, config: FindConfig | SemanticConfig | CopyConfig,
           reference: str | list[str] | None,
           executor: BaseExecutor, progress: bool, dry_run: bool, cache_dir: str | None, link: bool,
           storage_options: dict | None = None) -> DedupSummary:
    so = storage_options
    check_same_settings(output_dir, config, so)
    seconds: dict[str, float] = {}
    started = time.monotonic()
    if isinstance(config, SemanticConfig):
        if reference is not None:
            raise ValueError("--method semantic does not take a reference set yet")
        found = find_semantic_in_locked_folder(input_path, output_dir, config, executor, progress)
    elif isinstance(config, CopyConfig):
        if reference is not None:
            raise ValueError("--method copy does not take a reference set yet")
        found = find_copies_in_locked_folder(input_path, output_dir, config, executor, progress)
    else:
        found = find_in_locked_folder(input_path, output_dir, config, reference, executor, progress, so)
    seconds["find"] = time.monotonic() - started
    removal = None
    if dry_run:
        discard_stale_shards(output_dir, so)
    else:
        started = time.monotonic()
        removal = remove_duplicates(input_path, join(output_dir, "shards"), join(output_dir, "duplicates"),
                                    executor=executor, progress=progress, cache_dir=cache_dir,
                                    removed_path=join(output_dir, "removed.parquet"), link=link, exclude=output_dir,
                                    storage_options=so, replace_changed=True,
                                    id_scheme="key")  # its own find's list: keys, never guessed
        seconds["remove"] = time.monotonic() - started
    summary_path = join(output_dir, "summary.json")
    record = read_json(summary_path, so)  # find's: input, config, counts
    record.update(dry_run=dry_run, removal=asdict(removal) if removal else None,
                  removed_list=None if dry_run else join(output_dir, "removed.parquet"))
    write_json_atomic(record, summary_path, so)
    started = time.monotonic()
    with phase("report", progress):
        write_report(output_dir, executor=executor, storage_options=so)
    seconds["report"] = time.monotonic() - started
    write_json_atomic({**record, "seconds": seconds}, summary_path, so)
    return DedupSummary(images=found.images, groups=found.groups, duplicates=found.duplicates,
                        by_method=found.by_method, samples_in=removal.samples_in if removal else None,
                        kept=removal.kept if removal else None, removed=removal.removed if removal else None,
                        output=output_dir, dry_run=dry_run, seconds=seconds)

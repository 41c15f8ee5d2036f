"""The find workflow: hash every image once, search for near pairs, group them, list what to remove.

OUT/hashes/<shard>.parquet     per image: id, shard, position, size, format, hashes (reused by reruns)
OUT/duplicates/part-00000.parquet   one string column `id`, sorted: the IDs to remove (NeMo Curator's layout)
OUT/groups/part-00000.parquet  group_id, kept_id, id, method, distance for every member of every group
OUT/skipped.parquet            images that could not be decoded (with --on-error skip): id, shard, reason
OUT/summary.json               counts
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.groups import group_exact
from imagesieve.matching.hashes import EXACT, PERCEPTUAL
from imagesieve.matching.keep import keep_policy
from imagesieve.matching.near_search import popcount64
from imagesieve.matching.stream_groups import Confirm, near_keepers, nearest_in
from imagesieve.pipeline.inputs import InputUnit, check_input_outside, input_files_and_folders, input_units
from imagesieve.progress import phase
from imagesieve.stages.hashing import HashWriterStage, ImageHashStage
from imagesieve.stages.hashing.hash_writer import hash_table_path, schema_provenance
from imagesieve.storage import as_given, canonical, file_identity, join, read_schema, read_table, storage_for
from imagesieve.storage.runfolder import (
    narrow_to_files,
    remove_stale_temp_files,
)
from imagesieve.tar.names import IMAGE_RULE
from imagesieve.workflows.common import absolute_paths, given_paths, reader_for, run_in_locked_folder, run_on_units
from imagesieve.workflows.find_outputs import write_find_outputs

METHODS = ("exact", "phash", "dhash", "ahash", "whash")
# Chosen from the quality sweep on real photos (benchmarks/bench_find.py, BENCHMARKS.md): the best F1 for
# each hash, except pHash, where 10 keeps precision at 0.996 for an F1 within 0.01 of the best (12).
DEFAULT_THRESHOLDS = {"phash": 10, "dhash": 7, "ahash": 3, "whash": 3}
MAX_THRESHOLD = 32
# A pHash pair counts only when pHash and the two dHashes (rows, columns; of the same decode) together
# differ in at most this many of their 192 bits. Chance pairs grow as n^2: among 1M photo mosaics an image
# with no copy has ~9 others within 10 bits of pHash; this rule keeps about 1 in 4,400 of those and 99.99% of
# the planted copies. Chosen on generated mosaics, checked on the labelled photos (BENCHMARKS.md, "Precision at
# scale").
DEFAULT_CONFIRM = 26
MAX_CONFIRM = 192  # the bits of pHash and both dHashes
CONFIRMED_BY = {"phash": ("dhash", "dhash_vertical")}  # the hashes that confirm each method's pairs


@dataclass(frozen=True)
class FindConfig:
    method: str = "phash"
    threshold: int | None = None  # None: DEFAULT_THRESHOLDS[method]
    keep: str = "first"
    chaining: bool = False  # True: connected components; False: stars around the kept member
    flip: bool = False
    on_error: str = "fail"
    exact_decode: bool = False
    json_fields: tuple[str, ...] = ()
    # pHash: True confirms each pair by both dHashes (all three within DEFAULT_CONFIRM bits), a number sets
    # those bits, False takes every pair within the threshold
    confirm: bool | int = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.threshold is not None and not 0 <= self.threshold <= MAX_THRESHOLD:
            raise ValueError(f"threshold must be within 0..{MAX_THRESHOLD} bits of 64, got {self.threshold} "
                             "(beyond half the bits, unrelated images match)")
        if not isinstance(self.confirm, bool):
            if self.method not in CONFIRMED_BY:
                raise ValueError(f"confirm applies to {', '.join(CONFIRMED_BY)} only, not to {self.method}")
            if not isinstance(self.confirm, int) or not 0 <= self.confirm <= MAX_CONFIRM:
                raise ValueError(f"confirm must be within 0..{MAX_CONFIRM} bits (the three hashes together), got "
                                 f"{self.confirm!r}")
        keep_policy(self.keep)  # validates

    @property
    def max_distance(self) -> int:
        if self.method == "exact":
            return 0
        return DEFAULT_THRESHOLDS[self.method] if self.threshold is None else self.threshold

    @property
    def confirm_within(self) -> int | None:
        """The most bits the method's hash and its confirming hashes may differ in together, or None."""
        if self.method not in CONFIRMED_BY or self.confirm is False:
            return None
        return DEFAULT_CONFIRM if self.confirm is True else int(self.confirm)

    @property
    def kinds(self) -> tuple[str, ...]:
        if self.method == "exact":
            return ("bytes_hash", "pixel_hash")
        confirming = CONFIRMED_BY[self.method] if self.confirm_within is not None else ()
        return ("bytes_hash", self.method, *confirming)


@dataclass
class FindSummary:
    images: int
    skipped: int
    groups: int
    duplicates: int
    by_method: dict[str, int] = field(default_factory=dict)
    threshold: int = 0
    elapsed_seconds: float = 0.0
    confirm: int | None = None  # pHash and both dHashes together within this many bits (None: not confirmed)

    def lines(self) -> list[str]:
        methods = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_method.items())) or "none"
        confirmed = f", confirmed by dHash: all within {self.confirm} of 192" if self.confirm is not None else ""
        return [f"images           {self.images} ({self.skipped} skipped as unreadable)",
                f"groups           {self.groups}",
                f"duplicates       {self.duplicates} ({methods}; threshold {self.threshold}{confirmed})",
                f"elapsed          {self.elapsed_seconds:.1f} s"]


def hash_shards(input_path: str | list[str], output_dir: str, hashes_dir: str, config: FindConfig,
                executor: BaseExecutor | None, progress: bool, desc: str,
                storage_options: dict | None = None) -> list[InputUnit]:
    """Hash every shard (or folder chunk) whose hash table is missing, lacks a needed column, or was made
    from another version of the input or with other settings; returns the units (those under
    `output_dir` left out)."""
    units = input_units(input_path, output_dir, storage_options=storage_options)
    narrow_to_files(output_dir, input_files_and_folders(units))
    needed = {*config.kinds, *(f"{k}_flip" for k in config.kinds if config.flip and k in PERCEPTUAL),
              *(f"json.{f}" for f in config.json_fields)}
    settings = {"exact_decode": config.exact_decode, "image_rule": IMAGE_RULE}  # (which member is the image)
    todo = [unit for unit in units if not table_is_current(hash_table_path(hashes_dir, unit.rel), unit.fingerprint,
                                                           needed, settings, storage_options)]
    hasher = ImageHashStage(kinds=config.kinds, flip=config.flip, exact_decode=config.exact_decode,
                            on_error=config.on_error, json_fields=config.json_fields)
    writer = HashWriterStage(hashes_dir=hashes_dir, settings=settings, storage_options=storage_options)
    reader = reader_for(units, storage_options)
    writer.write_parts(run_on_units(desc, [reader, hasher, writer], todo, len(units), executor, progress, split=True))
    return units


def table_is_current(path: str, fingerprint: str, needed: set[str], settings: dict,
                     storage_options: dict | None = None) -> bool:
    if not storage_for(path, storage_options).exists(path):
        return False
    try:
        schema = read_schema(path, storage_options)
    except (OSError, pa.ArrowException):  # damaged (a 0-byte file after a power cut): stale, hashed again
        logging.getLogger(__name__).warning("%s: unreadable, the shard is hashed again", path)
        return False
    provenance = schema_provenance(schema)
    return (provenance.get("shard_fingerprint") == fingerprint
            and all(provenance.get(k) == v for k, v in settings.items())
            and needed <= set(schema.names))


def load_hashes(hashes_dir: str, units: list[InputUnit], storage_options: dict | None = None) -> pa.Table:
    """All hash tables in shard order."""
    tables = [read_table(hash_table_path(hashes_dir, unit.rel), storage_options) for unit in units]
    table = pa.concat_tables(tables, promote_options="permissive")
    if table.num_rows == 0:  # (img2dataset writes an empty tar for a shard whose every download failed)
        shown = ", ".join(unit.rel for unit in units[:3]) + (f" and {len(units) - 3} more" if len(units) > 3 else "")
        raise ValueError(f"the input holds no samples: every shard is an empty tar ({shown}); nothing to deduplicate")
    if "error" not in table.column_names:
        table = table.append_column("error", pa.nulls(table.num_rows, pa.string()))
    return table


def split_readable(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(images that were hashed, images that could not be read: id, shard, reason)."""
    readable = pc.is_null(table.column("error"))
    skipped = table.filter(pc.invert(readable))
    return table.filter(readable), pa.table({"id": skipped.column("id"), "shard": skipped.column("shard"),
                                             "reason": skipped.column("error")})


def check_unique_ids(table: pa.Table, what: str) -> None:
    """Removal works by ID, so an ID in two shards would remove both samples: refuse it."""
    if pc.count_distinct(table.column("id")).as_py() == table.num_rows:
        return
    counts = pc.value_counts(table.column("id"))
    repeated = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:3]
    shards = table.filter(pc.is_in(table.column("id"), pa.array(repeated))).column("shard").to_pylist()
    raise ValueError(f"{what}: sample keys must be unique across the dataset, but {repeated} appear more "
                     f"than once (in {sorted(set(shards))})")


def check_reference_apart(units: list[InputUnit], ref_units: list[InputUnit]) -> None:
    """A reference set that shares images with the input would list every shared image as a copy of
    itself and remove it: refuse it, naming one shared file. One file is one file by any name: a symlink,
    a hard link (`file_identity`), a URL alias (`canonical`)."""
    def files(of: list[InputUnit]) -> dict[object, str]:
        return {file_identity(p) or canonical(p): p for unit in of for p in unit.paths}

    inputs, references = files(units), files(ref_units)
    shared = sorted(inputs[key] for key in inputs.keys() & references.keys())
    if shared:
        raise ValueError(f"the reference set and the input share {len(shared)} file(s), e.g. {shared[0]}: every shared "
                         "image would be removed as a copy of itself; pass a reference set apart from the input")


def find_duplicates(input_path: str | list[str], output_dir: str, config: FindConfig = FindConfig(),
                    reference: str | list[str] | None = None, executor: BaseExecutor | None = None,
                    progress: bool = False, storage_options: dict | None = None) -> FindSummary:
    """Hash, search and group; write the duplicate list and the groups (see module docstring).
    INPUT, `reference` and `output_dir` may be URLs (`s3://...`), reached with `storage_options`."""
    input_path, output_dir = given_paths(input_path), as_given(output_dir)
    return run_in_locked_folder(input_path, output_dir, "find", lambda: find_in_locked_folder(
        input_path, output_dir, config, reference, executor, progress, storage_options), storage_options)


def find_in_locked_folder(input_path: str | list[str], output_dir: str, config: FindConfig,
                          reference: str | list[str] | None, executor: BaseExecutor | None,
                          progress: bool, storage_options: dict | None = None) -> FindSummary:
    """`find_duplicates` for a caller that holds the output folder's lock."""
    started = time.monotonic()
    so = storage_options
    check_input_outside(input_path, output_dir, so)  # before the cleanup below walks the output folder
    if config.keep.startswith("column:") and not config.json_fields:
        config = replace(config, json_fields=(config.keep.split(":", 1)[1],))
    remove_stale_temp_files(output_dir, so)
    executor = executor or LocalExecutor()
    if reference is not None:  # before any work
        check_reference_apart(input_units(input_path, output_dir, storage_options=so),
                              input_units(reference, output_dir, storage_options=so))
    shards = hash_shards(input_path, output_dir, join(output_dir, "hashes"), config, executor, progress, "hash", so)
    table = load_hashes(join(output_dir, "hashes"), shards, so)
    check_unique_ids(table, "input")
    table, skipped = split_readable(table)
    if reference is not None:
        ref_shards = hash_shards(reference, output_dir, join(output_dir, "reference_hashes"), config,
                                 executor, progress, "hash reference", so)
        ref, _ = split_readable(load_hashes(join(output_dir, "reference_hashes"), ref_shards, so))
    t = config.max_distance

    with phase("search and group", progress):
        search = {"parts": executor.parallelism(), "run_jobs": executor.map,
                  "threads": min(executor.parallelism(), os.cpu_count() or 1)}  # streamed search: here, in threads
        groups = _within_set(table, config, t, search) if reference is None else \
            _cross_set(table, ref, config, t, search)

    run = {"config": asdict(config), "input": absolute_paths(input_path),
           "input_root": shards[0].root or None,  # an image folder: IDs are paths under it
           "reference": absolute_paths(reference) if reference else None,
           "reference_root": ref_shards[0].root or None if reference is not None else None}
    return write_find_outputs(  # reference members are listed in groups but never removed
        output_dir, groups, skipped, lambda found: FindSummary(
            images=table.num_rows + skipped.num_rows, skipped=skipped.num_rows, **found, threshold=t,
            elapsed_seconds=time.monotonic() - started, confirm=config.confirm_within),
        run, table.column("id") if reference is not None else None, so)


def _exact_columns(config: FindConfig) -> list[str]:
    """The exact hashes that make two images the same: bytes, and for --method exact also pixels."""
    return [kind for kind in config.kinds if kind in EXACT]


def _exact_labels(table: pa.Table, config: FindConfig) -> list[np.ndarray]:
    return [pc.dictionary_encode(table.column(c)).combine_chunks().indices.to_numpy() for c in _exact_columns(config)
            if c in table.column_names]


def _codes(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy().astype(np.uint64)


def near_edges(codes: np.ndarray, t: int, config: FindConfig, table: pa.Table, rows: np.ndarray,
               search: Callable) -> tuple[np.ndarray, np.ndarray]:
    """Every pair within t bits of pHash, a mirrored copy included: the hash candidates to verify."""
    i, j, _ = search(codes, t)
    if config.flip:
        flipped = table.column(f"{config.method}_flip").to_numpy().astype(np.uint64)[rows]
        fi, fj, _ = search(codes, t, other=flipped)
        keep = fi != fj
        i = np.concatenate([i, np.minimum(fi, fj)[keep]])
        j = np.concatenate([j, np.maximum(fi, fj)[keep]])
    return i, j


def _within_set(table: pa.Table, config: FindConfig, t: int, search: dict) -> pa.Table:
    n = table.num_rows
    rank = keep_policy(config.keep).rank(table)
    rep = group_exact(_exact_labels(table, config), rank)
    if config.method == "exact":
        keeper = rep
    else:  # the near search among the exact groups' representatives, grouped as it goes (no pairs held)
        reps = np.flatnonzero(rep == np.arange(n))
        flipped = _codes(table, f"{config.method}_flip")[reps] if config.flip else None
        confirm = _confirm(table, config)
        if confirm is not None:
            confirm = confirm.take(reps)
        keeper_of_rep = near_keepers(_codes(table, config.method)[reps], t, rank[reps], flipped, config.chaining,
                                     confirm=confirm, **search)
        keeper = np.arange(n)
        keeper[reps] = reps[keeper_of_rep]
        keeper = keeper[rep]
    return _groups_table(table, table, keeper, rep, config)


def _confirm(table: pa.Table, config: FindConfig) -> Confirm | None:
    """The second hash of each row (and of its mirror) that a pair must agree on, or None."""
    if config.confirm_within is None:
        return None
    kinds = CONFIRMED_BY[config.method]
    return Confirm(_code_words(table, kinds), _code_words(table, [f"{k}_flip" for k in kinds]) if config.flip else None,
                   config.confirm_within)


def _code_words(table: pa.Table, columns: list[str] | tuple[str, ...]) -> np.ndarray:
    return np.stack([_codes(table, c) for c in columns], axis=1)


def _distances(config: FindConfig, members: pa.Table, keepers: pa.Table) -> np.ndarray:
    if config.method == "exact":
        return np.zeros(members.num_rows, dtype=np.int64)
    dist = popcount64(_codes(members, config.method) ^ _codes(keepers, config.method))
    if config.flip:
        dist = np.minimum(dist, popcount64(_codes(members, config.method) ^ _codes(keepers, f"{config.method}_flip")))
    return dist


def _groups_table(members: pa.Table, keepers_from: pa.Table, keeper: np.ndarray, rep: np.ndarray | None,
                  config: FindConfig) -> pa.Table:
    """One row per member of every group of two or more (kept members included, method "kept")."""
    n = members.num_rows
    is_keeper_of_other = np.zeros(keepers_from.num_rows, dtype=bool)
    removed = np.flatnonzero(keeper != np.arange(n)) if keepers_from is members else np.flatnonzero(keeper >= 0)
    is_keeper_of_other[keeper[removed]] = True
    kept_rows = np.flatnonzero(is_keeper_of_other)
    member_ids = members.column("id").take(pa.array(removed))
    kept_of_removed = keepers_from.take(pa.array(keeper[removed]))
    dist = _distances(config, members.take(pa.array(removed)), kept_of_removed)
    if rep is not None:
        exact = rep[removed] == rep[keeper[removed]]
    else:
        exact = members.column("bytes_hash").take(pa.array(removed)).to_numpy(zero_copy_only=False) == \
            kept_of_removed.column("bytes_hash").to_numpy(zero_copy_only=False)
    method = np.where(exact, "exact", config.method)
    dist = np.where(exact, 0, dist)
    kept_ids = keepers_from.column("id").take(pa.array(kept_rows))
    # groups are numbered by their kept row; kept_rows is sorted, so a search gives the number
    group_ids = np.concatenate([np.arange(len(kept_rows)), np.searchsorted(kept_rows, keeper[removed])])
    return pa.table({
        "group_id": pa.array(group_ids, pa.int64()),
        "kept_id": pa.concat_arrays([kept_ids.combine_chunks(),
                                     kept_of_removed.column("id").combine_chunks()]),
        "id": pa.concat_arrays([kept_ids.combine_chunks(), member_ids.combine_chunks()]),
        "method": pa.array(["kept"] * len(kept_rows) + method.tolist(), pa.string()),
        "distance": pa.array(np.concatenate([np.zeros(len(kept_rows), np.int64), dist]), pa.int64()),
    })


def _cross_set(table: pa.Table, ref: pa.Table, config: FindConfig, t: int, search: dict) -> pa.Table:
    """Every input image within t of any reference image is a duplicate of its nearest one."""
    best = np.full(table.num_rows, -1, dtype=np.int64)
    best_dist = np.full(table.num_rows, 65, dtype=np.int64)
    for column in _exact_columns(config):
        at = pc.index_in(table.column(column), value_set=ref.column(column).combine_chunks(), skip_nulls=True)
        at = pc.fill_null(at, -1).to_numpy().astype(np.int64)
        same = np.flatnonzero((at >= 0) & (best < 0))
        best[same], best_dist[same] = at[same], 0
    if config.method != "exact":
        codes = _codes(table, config.method)
        confirm = _confirm(ref, config)
        nearest = nearest_in(codes, _codes(ref, config.method), t,
                             _codes(ref, f"{config.method}_flip") if config.flip else None, search["threads"],
                             confirm, None if confirm is None else _code_words(table, CONFIRMED_BY[config.method]))
        found = np.flatnonzero(nearest >= 0)
        d = popcount64(codes[found] ^ _codes(ref, config.method)[nearest[found]])
        if config.flip:
            d = np.minimum(d, popcount64(codes[found] ^ _codes(ref, f"{config.method}_flip")[nearest[found]]))
        better = d < best_dist[found]
        best[found[better]], best_dist[found[better]] = nearest[found[better]], d[better]
    return _groups_table(table, ref, best, None, config)

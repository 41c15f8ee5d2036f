"""What a remove run's ID list names, decided once for the whole run; and the refusal, before any
output is written, of a list that names no sample of the run, which would otherwise copy every shard
and look successful."""

from __future__ import annotations

import logging
import os

from imagesieve.pipeline.inputs import InputUnit
from imagesieve.stages.deduplication.curator_ids import CURATOR_ID, examples, looks_like_curator, stem
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.storage import storage_for
from imagesieve.tar.read import ShardReader, iter_samples, read_table

logger = logging.getLogger(__name__)


class UnmatchedIdsError(ValueError):
    """No listed ID names a sample of the run."""


class AmbiguousIdsError(ValueError):
    """A listed Curator ID names two shards of the run."""


def resolve_id_scheme(removal: ImageDuplicatesRemovalStage, units: list[InputUnit],
                      storage_options: dict | None = None) -> str:
    """"key" or "curator" for `removal.id_scheme`: "auto" means Curator reader IDs when the list is
    shaped as Curator's, names shards of the input, and no listed ID is a key of any input shard (a
    key read as a position names another sample: after re-sharding, `00001_000003` may be a key of
    00000.tar). Said once, here on the driver; `removal` is set up."""
    if removal.id_scheme != "auto":
        return removal.id_scheme
    curator = removal._curator
    if curator is None or units[0].is_folder_chunk:
        return "key"
    if not any(curator.names_shard(unit.paths[0]) for unit in units):
        return "key"
    # Every shard's tar headers, until a listed key is found: a full scan when none is, acceptable as
    # it happens only for a list whose every sampled ID is Curator-shaped. While the scheme is "auto",
    # `names_a_sample` looks IDs up as keys.
    reader = ShardReader()
    if any(names_a_sample(removal, unit, storage_options, reader) for unit in units):
        return "key"
    for unit in (u for u in units if curator.names_shard(u.paths[0])):  # the shards positions would be read in
        keys = input_keys([unit], storage_options)
        if keys and any(CURATOR_ID.match(key) for key in keys):
            break
    else:
        keys = []
    if keys:
        raise AmbiguousIdsError(
            f"the IDs in {removal.removal_parquets_dir} (such as {', '.join(map(repr, examples(removal._index, 2)))}) "
            f"are shaped as NeMo Curator reader IDs, but so are the input's own keys (such as "
            f"{', '.join(map(repr, keys))}) and no listed ID is one of them: they may be keys removed since, or "
            "positions; read by position they would remove other samples. Nothing was written: pass --id-scheme key "
            "(id_scheme='key') if they are keys, --id-scheme curator if they are Curator's reader IDs")
    logger.warning("the IDs in %s are NeMo Curator reader IDs ({tar stem}_{index:06d}, e.g. %s), not sample keys: "
                   "mapped to samples by shard and position (right only for the shards Curator read, unchanged); "
                   "pass id_scheme / --id-scheme to choose", removal.removal_parquets_dir,
                   ", ".join(examples(removal._index, 2)))
    return "curator"


def check_curator_stems(removal: ImageDuplicatesRemovalStage, units: list[InputUnit]) -> None:
    """Curator IDs name a shard by its stem alone: refuse, before any output is written, an input where
    a stem the list names is the stem of two shards (in two sub-folders). Mapped to both, one ID would
    remove a sample from each, and the run fail its count after writing them."""
    if removal.id_scheme != "curator" or units[0].is_folder_chunk:
        return
    curator = removal._curator
    seen: dict[str, str] = {}
    for unit in units:
        shard = unit.paths[0]
        if not curator.names_shard(shard):
            continue
        other = seen.setdefault(stem(shard), shard)
        if other != shard:
            raise AmbiguousIdsError(
                f"the NeMo Curator reader IDs in {removal.removal_parquets_dir} (such as {curator.first_id(shard)!r}) "
                f"name shards by their stem, and {stem(shard)!r} is the stem of both {other} and {shard}, so which "
                "sample they mean is unclear; nothing was written. If the IDs are sample keys pass --id-scheme key "
                "(id_scheme='key'); else give as input only the folder whose shards Curator read")


def check_ids_match(removal: ImageDuplicatesRemovalStage, units: list[InputUnit],
                    storage_options: dict | None = None) -> None:
    """Refuse, before any output is written, a list of which no ID names a sample of the run (those
    done by an earlier run too): it would copy every shard unchanged and look successful. Shards are
    looked at one by one until one is named, from their tar headers only, so a list that matches
    costs about one shard's headers; Curator IDs look only at the shards they name. The error names
    the ID folder, a few listed IDs and a few keys of the input. `removal` is set up, its scheme fixed."""
    if not removal.listed_ids or (removal.id_scheme == "curator" and units[0].is_folder_chunk):
        return  # curator IDs over an image folder: the stage refuses them, saying why
    reader = ShardReader()
    if any(names_a_sample(removal, unit, storage_options, reader) for unit in units):
        return
    listed = ", ".join(repr(i) for i in examples(removal._index))
    keys = ", ".join(repr(k) for k in input_keys(units, storage_options))
    if removal.id_scheme == "curator":
        hint = ("read as NeMo Curator reader IDs they name no sample of these shards: were they made from other "
                "shards, or have these changed since Curator read them?")
    elif looks_like_curator(removal._index) and not units[0].is_folder_chunk:
        hint = (f"they are shaped as NeMo Curator reader IDs but name no shard of the input (its shards are named "
                f"{', '.join(repr(stem(u.paths[0])) for u in units[:3])}); check the ID folder, or pass "
                "--id-scheme curator")
    else:
        hint = "check the ID folder and the ID column (--id-field)"
    raise UnmatchedIdsError(
        f"none of the {removal.listed_ids} IDs listed in {removal.removal_parquets_dir} (such as {listed}) names a "
        f"sample of the input ({len(units)} shard{'s' * (len(units) != 1)}, keys such as {keys}), so the run would "
        f"remove nothing; nothing was written; {hint}. When the input is only part of the shards the list was made "
        "for, pass --allow-unmatched-ids (allow_unmatched_ids=True)")


def names_a_sample(removal: ImageDuplicatesRemovalStage, unit: InputUnit, storage_options: dict | None = None,
                   reader: ShardReader | None = None) -> bool:
    """Whether the list names a sample of `unit` as the stage will read it: by key, or by Curator ID."""
    if unit.is_folder_chunk:
        return bool(removal._index.contains([os.path.relpath(p, unit.root) for p in unit.paths]).any())
    shard = unit.paths[0]
    curator = removal._curator if removal.id_scheme == "curator" else None
    if curator is not None and not curator.names_shard(shard):
        return False
    with storage_for(shard, storage_options).local_copy(shard) as local:
        table = read_table(local, reader)
    table.display_shard = shard  # Curator IDs name it by its own name, not a spool copy's
    if curator is not None:
        return len(curator.listed_rows(table)) > 0
    return bool(removal._index.contains_hashed(table.key_hashes, table.key_array).any())


def input_keys(units: list[InputUnit], storage_options: dict | None = None, count: int = 3) -> list[str]:
    """The IDs of the first few samples of the input, for messages."""
    unit = units[0]
    if unit.is_folder_chunk:
        return [os.path.relpath(path, unit.root) for path in unit.paths[:count]]
    with storage_for(unit.paths[0], storage_options).local_copy(unit.paths[0]) as local:
        keys = []
        for sample in iter_samples(local, loose=[]):
            keys.append(sample.key)
            if len(keys) == count:
                break
    return keys

"""Accounting around each stage call: what a stage silently dropped is recorded, never lost.

Before a stage runs, the executor notes the images of every input `ImageBatch` (by shard and
ID) and its ledger. After it, each input's ledger moves to the first output holding its images
(or the batch the stage returned with that ledger); images missing from every output and not
recorded through `ImageBatch.drop` are recorded as "dropped by <stage>". A stage that builds fresh
batches (as the reference's filters do) or returns None for a whole batch loses nothing: an input
with no output left gets an empty batch that carries its ledger to the writer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from imagesieve.tasks import ImageBatch, Ledger, Removal, Task, check_accounting


@dataclass
class Snapshot:
    """The image batches a stage was given, as they were before it ran."""

    positions: list[int]  # of each batch among the stage's input tasks
    batches: list[ImageBatch]
    ledgers: list[Ledger]
    removed: list[int]  # how many removals each ledger held
    rows: list[np.ndarray | None]  # a batch still over its table: its rows (drop_rows replaces the array)
    eager_keys: list[list[tuple[str, str]] | None]  # any other batch: its images' keys, taken now

    @functools.cached_property
    def keys(self) -> list[list[tuple[str, str]]]:
        """(shard, id) of every image of each batch before the stage ran."""
        return [keys if keys is not None else _table_keys(batch, rows)
                for batch, rows, keys in zip(self.batches, self.rows, self.eager_keys, strict=True)]


def _table_keys(batch: ImageBatch, rows: np.ndarray) -> list[tuple[str, str]]:
    table = batch.__dict__["_table"]
    return [(table.display_shard, key) for key in table.keys_of(rows)]


def snapshot(tasks: list[Task]) -> Snapshot | None:
    positions = [i for i, t in enumerate(tasks) if isinstance(t, ImageBatch)]
    if not positions:
        return None
    batches = [tasks[i] for i in positions]
    rows = [b.lazy_rows for b in batches]
    return Snapshot(positions, batches, [b.ledger for b in batches], [len(b.ledger.removed) for b in batches], rows,
                    [b.image_keys() if r is None else None for b, r in zip(batches, rows, strict=True)])


def _settled_in_place(stage_name: str, before: Snapshot, per_input: list[list[Task]]) -> bool:
    """The common case, checked without a key per image: each input batch came back alone, as itself,
    still over its table, having lost only rows that its ledger records (removal's `drop_rows`)."""
    mine = set(before.positions)
    if any(outs for k, outs in enumerate(per_input) if k not in mine):
        return False
    for position, batch, ledger, removed, rows in zip(before.positions, before.batches, before.ledgers,
                                                      before.removed, before.rows, strict=True):
        outs = per_input[position]
        now = batch.lazy_rows
        if rows is None or now is None or len(outs) != 1 or outs[0] is not batch or batch.ledger is not ledger:
            return False
        if len(now) + len(ledger.removed) - removed != len(rows) or not np.isin(now, rows).all():
            return False  # something went missing silently, or came from elsewhere: the full account says what
    for batch in before.batches:
        check_accounting(f"stage {stage_name!r}: {_where(batch)}", batch.ledger.samples_in, batch.num_items,
                         len(batch.ledger.removed))
    return True


def settle(stage_name: str, before: Snapshot | None, per_input: list[list[Task]]) -> None:
    """Give every output batch its ledger, recording silent drops; an input that left no output
    gets a carrier in its list. Only for stages whose outputs are all image batches."""
    outputs = [t for outs in per_input for t in outs]
    if before is None or not all(isinstance(o, ImageBatch) for o in outputs):
        return
    if _settled_in_place(stage_name, before, per_input):
        return
    owner = {key: i for i, keys in enumerate(before.keys) for key in keys}
    known = {id(ledger): i for i, ledger in enumerate(before.ledgers)}
    claimed: dict[int, ImageBatch] = {}
    seen: set[tuple[str, str]] = set()
    plan: list[tuple[ImageBatch, list[int], list[Removal]]] = []
    keys_of = {id(out): out.image_keys() for out in outputs}
    for out in outputs:
        keys = keys_of[id(out)]
        seen.update(keys)
        sources = [known[id(out.ledger)]] if id(out.ledger) in known else []
        sources += [owner[k] for k in keys if k in owner]
        mine = [i for i in dict.fromkeys(sources) if i not in claimed]
        for i in mine:
            claimed[i] = out
        own_removals = [] if id(out.ledger) in known else list(out.ledger.removed)  # drop() on a fresh batch
        plan.append((out, mine, own_removals))
    for i in [i for i in range(len(before.batches)) if i not in claimed]:
        carrier = replace(before.batches[i], data=[])
        per_input[before.positions[i]].append(carrier)
        claimed[i] = carrier
        plan.append((carrier, [i], []))
    gone = seen | {(r.shard, r.image_id) for out, _, _ in plan for r in out.ledger.removed}
    # images that left the output holding their input's ledger (fan-out) count in where they went
    moved_in: dict[int, int] = {}
    moved_out: dict[int, int] = {}
    for out, _, _ in plan:
        for key in keys_of.get(id(out), ()):
            holder = claimed.get(owner.get(key, -1))
            if holder is not out:
                moved_in[id(out)] = moved_in.get(id(out), 0) + 1
                if holder is not None:
                    moved_out[id(holder)] = moved_out.get(id(holder), 0) + 1
    for out, mine, own in plan:
        ledger = Ledger(samples_in=0, removed=list(own))
        for i in mine:
            ledger.samples_in += before.ledgers[i].samples_in
            ledger.removed.extend(before.ledgers[i].removed)
            ledger.removed.extend(Removal(image_id, shard, f"dropped by {stage_name}") for shard, image_id
                                  in before.keys[i] if (shard, image_id) not in gone)
        ledger.samples_in += moved_in.get(id(out), 0) - moved_out.get(id(out), 0)
        ledger.samples_in += sum(1 for r in own if (r.shard, r.image_id) not in owner)  # images the stage made
        out.ledger = ledger
        check_accounting(f"stage {stage_name!r}: {_where(out)}", ledger.samples_in, out.num_items, len(ledger.removed))


def _where(batch: ImageBatch) -> str:
    return batch._metadata.get("shard") or batch.task_id or batch.dataset_name

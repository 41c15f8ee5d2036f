"""Which members get a thumbnail: what a person pages through first, and a sample of the rest.

Making thumbnails is the report's only per-image work (each one reads and decodes an image), so their
number is bounded whatever the run's size: a report of a million groups makes as many as one of ten
thousand. Half of the bound goes to the groups a person sees first (the first pages of every filter,
then the next largest groups); the other half to a deterministic sample of the remaining groups, so
that the small groups, where thresholds are decided, are seen too. Every group is listed either way.
"""

from __future__ import annotations

import numpy as np

MAX_THUMBNAILS = 3000  # images per report; README.md ("The report") states it
# members of one group with a thumbnail (its kept image first): a group of 100,000 near-copies would
# otherwise take the whole bound, leaving every other group without a picture
PER_GROUP = 24


def thumbnail_rows(starts: np.ndarray, first_page: np.ndarray, limit: int = MAX_THUMBNAILS,
                   per_group: int = PER_GROUP) -> np.ndarray:
    """Member rows (sorted) to make thumbnails of: the first `per_group` members of each group, groups in
    the order above, until `limit` rows (the last group chosen may be cut). `starts` bounds each group's
    rows; `first_page[k]` is the earliest page on which a filter shows group k."""
    sizes = np.minimum(np.diff(starts), per_group)
    if limit <= 0 or not len(sizes):
        return np.zeros(0, np.int64)
    front = np.lexsort((np.arange(len(sizes)), first_page))
    taken = int(np.searchsorted(np.cumsum(sizes[front]), limit // 2, side="left")) + 1
    rest = np.setdiff1d(np.arange(len(sizes)), front[:taken], assume_unique=True)
    order = np.concatenate([front[:taken], np.random.default_rng(0).permutation(rest)])
    ends = np.cumsum(sizes[order])
    order = order[:int(np.searchsorted(ends, limit, side="left")) + 1]
    lengths = sizes[order]
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = np.repeat(starts[order], lengths) + within
    return np.sort(rows[:limit])

"""Groups and keep policies."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from imagesieve.matching.groups import best_of_components, group_exact, group_stars
from imagesieve.matching.keep import keep_policy


def test_chain_is_one_component_but_stars_do_not_chain():
    # 0~1 and 1~2, but 0 and 2 are too far apart to be duplicates of one another
    i, j, rank = np.array([0, 1]), np.array([1, 2]), np.arange(4)
    assert best_of_components(4, i, j, rank).tolist() == [0, 0, 0, 3]
    assert group_stars(4, i, j, rank).tolist() == [0, 0, 2, 3]


def test_stars_follow_keep_rank():
    i, j = np.array([0, 1]), np.array([1, 2])
    rank = np.array([2, 0, 1])  # 1 is preferred: it keeps both neighbours
    assert group_stars(3, i, j, rank).tolist() == [1, 1, 1]


def test_exact_groups_join_across_hash_kinds():
    bytes_labels = np.array([0, 0, 1, 2, 3])
    pixel_labels = np.array([0, 0, 1, 1, 4])  # 2 and 3 differ in bytes but decode to the same pixels
    assert group_exact([bytes_labels, pixel_labels], np.arange(5)).tolist() == [0, 0, 2, 2, 4]


def test_keep_policies_rank_by_column_then_first_seen():
    table = pa.table({"pixels": [100, 400, 400, 50], "file_size": [9, 1, 5, 3],
                      "json.score": pa.array([0.1, None, 0.7, 0.7])})
    assert keep_policy("first").rank(table).tolist() == [0, 1, 2, 3]
    assert keep_policy("resolution").rank(table).tolist() == [2, 0, 1, 3]
    assert keep_policy("file-size").rank(table).tolist() == [0, 3, 1, 2]
    assert keep_policy("column:score").rank(table).tolist() == [2, 3, 0, 1]  # missing ranks last


def test_unknown_keep_policy():
    with pytest.raises(ValueError, match="unknown keep policy 'largest'"):
        keep_policy("largest")
    with pytest.raises(ValueError, match="no sample has a value for 'nope' in its .json"):
        keep_policy("column:nope").rank(pa.table({"x": [1]}))

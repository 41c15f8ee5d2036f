"""Turn pairs of near-duplicates into groups, each with one kept member.

Two ways to group: connected components (a chain a~b~c is one group even when a and c are far
apart), or stars, which avoid chaining: images are visited in keep order, and each image not yet
placed keeps every unplaced neighbour within the threshold of itself.
"""

from __future__ import annotations

import numpy as np


def group_exact(labels: list[np.ndarray], rank: np.ndarray) -> np.ndarray:
    """rep[i] = the best-ranked image that shares a label with image i in any of `labels` (transitively).

    Each array of `labels` numbers the distinct values of one exact hash (equal value, equal label).
    """
    n = len(rank)
    if len(labels) == 1:  # one hash: its groups are the components, no graph needed (nor scipy)
        order = np.lexsort((rank, labels[0]))  # by label, best rank first
        first = np.ones(n, dtype=bool)
        first[1:] = labels[0][order][1:] != labels[0][order][:-1]
        best = order[first][np.cumsum(first) - 1]  # each sorted row's best-ranked member
        rep = np.empty(n, dtype=np.int64)
        rep[order] = best
        return rep
    rows, cols = [], []
    for inverse in labels:
        order = np.argsort(inverse, kind="stable")
        same = inverse[order][1:] == inverse[order][:-1]
        rows.append(order[1:][same])
        cols.append(order[:-1][same])
    return best_of_components(n, np.concatenate(rows or [np.zeros(0, int)]),
                              np.concatenate(cols or [np.zeros(0, int)]), rank)


def best_of_components(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each node, the best-ranked node of its connected component."""
    from scipy.sparse import coo_matrix  # here, not at import: scipy.sparse adds ~0.1 s to every `find`
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.lexsort((rank, labels))  # by component, best rank first
    first = np.ones(n, dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    best_of_label = np.empty(labels.max() + 1 if n else 0, dtype=np.int64)
    best_of_label[labels[order][first]] = order[first]
    return best_of_label[labels]


def group_stars(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """keeper[x] for star groups: no member is further than the threshold from its keeper."""
    keeper = np.arange(n)
    if len(i) == 0:
        return keeper
    nodes = np.concatenate([i, j])
    neighbours = np.concatenate([j, i])
    order = np.argsort(nodes, kind="stable")
    nodes, neighbours = nodes[order], neighbours[order]
    starts = np.searchsorted(nodes, np.arange(n + 1))
    placed = np.zeros(n, dtype=bool)
    involved = np.unique(nodes)
    for node in involved[np.argsort(rank[involved], kind="stable")]:
        if placed[node]:
            continue
        placed[node] = True
        near = neighbours[starts[node]:starts[node + 1]]
        near = near[~placed[near]]
        keeper[near] = node
        placed[near] = True
    return keeper

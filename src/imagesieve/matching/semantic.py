"""Semantic near-duplicates on the CPU: k-means (faiss), then exact cosine similarity within clusters.

Embeddings are unit vectors in a memory-mapped float32 file (rows in input order), so no step needs
them all in memory. K-means is trained on a sample; assignment streams over the file. A point is a
member of its nearest cluster and a guest in the next nearest ones whose centroids are almost as near
(`probe_margin`), so that pairs split by a cluster boundary are still compared. Each cluster is one
job: blocked products of its members (and guests against members) give every pair with similarity
>= 1 - eps. The pairs are then resolved in one global pass in keep order, without chaining: an image
is removed only when it is within eps of an image that is kept.
"""

from __future__ import annotations

import numpy as np

ASSIGN_CHUNK = 1 << 16
# k-means trains on at most this many points per cluster: its centroids only have to spread the data
# into balanced parts (every pair within a part is then compared exactly), so a small sample does;
# faiss itself warns below 39
SAMPLE_PER_CLUSTER = 64


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("semantic deduplication needs faiss: pip install 'imagesieve[semantic]'") from exc
    return faiss


def train_kmeans(sample: np.ndarray, n_clusters: int, max_iter: int, random_state: int) -> np.ndarray:
    """Unit-length centroids of spherical k-means on `sample` (rows are unit vectors)."""
    faiss = _faiss()

    kmeans = faiss.Kmeans(sample.shape[1], n_clusters, niter=max_iter, seed=random_state, spherical=True,
                          min_points_per_centroid=1, max_points_per_centroid=max(1, -(-len(sample) // n_clusters)))
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    return kmeans.centroids


def cluster_rows(embeddings: np.ndarray, n_clusters: int, max_iter: int, random_state: int, probes: int,
                 fit_data_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, similarities) of `assign`, with centroids trained on a sample of the (memory-mapped) rows."""
    n = len(embeddings)
    rng = np.random.default_rng(random_state)
    size = n if fit_data_fraction is None else max(n_clusters, round(n * fit_data_fraction))
    size = min(size, n_clusters * SAMPLE_PER_CLUSTER, n)
    sample = np.sort(rng.choice(n, size=size, replace=False))
    centroids = train_kmeans(np.asarray(embeddings[sample]), n_clusters, max_iter, random_state)
    return assign(embeddings, centroids, probes)


def assign(embeddings: np.ndarray, centroids: np.ndarray, probes: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, similarities), each (n, probes): each row's nearest centroids, nearest first, streamed
    in chunks over a memory-mapped `embeddings`."""
    faiss = _faiss()

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    probes = min(probes, len(centroids))
    labels = np.empty((len(embeddings), probes), dtype=np.int64)
    sims = np.empty((len(embeddings), probes), dtype=np.float32)
    for start in range(0, len(embeddings), ASSIGN_CHUNK):
        chunk = np.ascontiguousarray(embeddings[start:start + ASSIGN_CHUNK], dtype=np.float32)
        sims[start:start + len(chunk)], labels[start:start + len(chunk)] = index.search(chunk, probes)
    return labels, sims


def cluster_jobs(labels: np.ndarray, sims: np.ndarray, probe_margin: float, n_jobs: int
                 ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Clusters as (members, guests) row arrays, packed into about `n_jobs` lists of similar cost
    (members^2 + guests x members); clusters of one member and no guest are left out."""
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    rows = np.arange(len(labels))
    members = _split(labels[:, 0], rows, n_clusters)
    guest_rows, guest_labels = [], []
    for p in range(1, labels.shape[1]):
        near = sims[:, p] >= sims[:, 0] - probe_margin
        guest_rows.append(rows[near])
        guest_labels.append(labels[near, p])
    guests = _split(np.concatenate(guest_labels) if guest_labels else np.zeros(0, np.int64),
                    np.concatenate(guest_rows) if guest_rows else np.zeros(0, np.int64), n_clusters)
    clusters = [(m, g) for m, g in zip(members, guests, strict=True) if len(m) > 1 or (len(m) and len(g))]
    cost = np.array([len(m) * (len(m) + len(g)) for m, g in clusters], dtype=np.float64)
    bins: list[list] = [[] for _ in range(max(1, min(n_jobs, len(clusters))))]
    load = np.zeros(len(bins))
    for c in np.argsort(-cost, kind="stable"):  # largest first into the emptiest bin
        b = int(np.argmin(load))
        bins[b].append(clusters[c])
        load[b] += cost[c]
    return [b for b in bins if b]


def _split(labels: np.ndarray, rows: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
    return [rows[order[bounds[c]:bounds[c + 1]]] for c in range(n_clusters)]


def similar_pairs(path: str, shape: tuple[int, int], clusters: list[tuple[np.ndarray, np.ndarray]],
                  threshold: float, block: int = 1024, k: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j, similarity) with similarity >= threshold within the given clusters (members
    with members, guests with members), read from the embeddings file at `path`. One executor job.
    With `k`, only each row's k most similar partners (copy candidates: a loose threshold would
    otherwise list every pair of a dense cluster); a pair may then come once from each side."""
    embeddings = np.memmap(path, dtype=np.float32, mode="r", shape=shape)
    found_i, found_j, found_s = [], [], []
    for members, guests in clusters:
        rows = np.sort(members)
        home = np.asarray(embeddings[rows])
        for start in range(0, len(rows), block):
            sim = home[start:start + block] @ home.T
            if k is not None:
                sim[np.arange(len(sim)), np.arange(start, start + len(sim))] = -np.inf  # never itself
            a, b = _selected(sim, threshold, k)
            keep = b > a + start if k is None else b != a + start  # each pair once, never an image with itself
            found_i.append(rows[a[keep] + start])
            found_j.append(rows[b[keep]])
            found_s.append(sim[a[keep], b[keep]])
        if len(guests):
            visitors = np.asarray(embeddings[guests])
            for start in range(0, len(guests), block):
                sim = visitors[start:start + block] @ home.T
                a, b = _selected(sim, threshold, k)
                found_i.append(guests[a + start])
                found_j.append(rows[b])
                found_s.append(sim[a, b])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s).astype(np.float32)


def _selected(sim: np.ndarray, threshold: float, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the entries >= threshold, or with `k` of each row's k largest such entries."""
    if k is None or k >= sim.shape[1]:
        return np.nonzero(sim >= threshold)
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(len(sim)), k)
    cols = top.reshape(-1)
    keep = sim[rows, cols] >= threshold
    return rows[keep], cols[keep]


def resolve_no_chaining(n: int, i: np.ndarray, j: np.ndarray, sim: np.ndarray, rank: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(keeper, similarity): keeper[v] = the kept image v duplicates (or v itself, kept), chosen as the
    most similar image of better rank that is itself kept. Images are decided in rank order, so a
    chain a~b~c (a and c far apart, a ranked first) removes b and keeps c."""
    keeper = np.arange(n)
    best = np.ones(n, dtype=np.float32)
    if len(i) == 0:
        return keeper, best
    better_i = rank[i] < rank[j]
    u, v = np.where(better_i, i, j), np.where(better_i, j, i)  # u ranks before v
    pair = np.unique(u.astype(np.int64) * n + v, return_index=True)[1]  # a pair found twice counts once
    u, v, s = u[pair], v[pair], sim[pair]
    order = np.lexsort((-s, rank[v]))  # by v's rank, then most similar first
    u, v, s = u[order], v[order], s[order]
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    kept = np.ones(n, dtype=bool)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        alive = kept[u[a:b]]  # candidates most similar first: the first kept one is the keeper
        if alive.any():
            k = a + int(alive.argmax())
            kept[v[a]] = False
            keeper[v[a]], best[v[a]] = u[k], s[k]
    return keeper, best

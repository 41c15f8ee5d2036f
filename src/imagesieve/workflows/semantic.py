"""Semantic deduplication: NeMo Curator's `SemanticDeduplicationWorkflow`, on the CPU.

Input: Parquet files with an ID and an embedding per row (ours from `ImageEmbeddingStage`, Curator's,
anyone's). Output, as the other finders write it, so `remove` and `report` read it unchanged:

OUT/duplicates/part-00000.parquet   `id`: the images to remove
OUT/groups/part-00000.parquet       group_id, kept_id, id, method ("kept" | "semantic", or with
                                    `extra_pairs` "phash" | "exact"), distance (1 - cosine
                                    similarity), similarity
OUT/skipped.parquet                 images that had no embedding (unreadable): id, reason
OUT/summary.json                    counts and the configuration

With `eps=None` (Curator's meaning: compute the similarities, list no duplicates) it writes instead
OUT/pairwise_results/part-00000.parquet  id, max_id, cosine_sim_score: each image's most similar other
                                         image among those it was compared with, to choose eps from.

`input_path` may also be a clip-retrieval / LAION folder (`img_emb/*.npy` beside `metadata/*.parquet`,
see `embeddings_io`); there the ID column (`id_field`) defaults to `key`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.embeddings_io import LoadedEmbeddings, default_id_field, embedding_sources, load_embeddings
from imagesieve.matching.keep import CENTROID_SIMILARITY, keep_policy
from imagesieve.matching.semantic import cluster_jobs, cluster_rows, resolve_no_chaining, similar_pairs
from imagesieve.pipeline.inputs import check_input_outside
from imagesieve.progress import phase
from imagesieve.stages.embedding.embedding_writer import refuse_stale_tables
from imagesieve.storage import on_local_file_system
from imagesieve.storage.runfolder import (
    WORK_DIR,
    live_holder,
    read_json,
    refuse_foreign_files,
    remove_stale_temp_files,
    write_parquet_atomic,
)
from imagesieve.tasks import FileGroupTask
from imagesieve.workflows.curator_options import check_curator_options, check_io_kwargs
from imagesieve.workflows.find_outputs import list_paths, write_find_outputs


@dataclass
class SemanticSummary:
    images: int
    skipped: int
    groups: int
    duplicates: int
    clusters: int
    threshold: float | None  # eps; None: similarities only (pairwise_results/), no duplicates listed
    by_method: dict[str, int] = field(default_factory=dict)
    elapsed_seconds: float = 0.0
    kmeans_seconds: float = 0.0
    pairwise_seconds: float = 0.0
    outputs: dict[str, list[str]] = field(default_factory=dict)  # what each part wrote: "pairwise", "duplicates"

    workflow_name = "semantic_deduplication"  # the rest of Curator's WorkflowRunResult, where a user reads it

    @property
    def metadata(self) -> dict:
        """Curator's `WorkflowRunResult.metadata` keys, and this summary's counts."""
        return {"total_time": self.elapsed_seconds, "kmeans_time": self.kmeans_seconds,
                "pairwise_time": self.pairwise_seconds, "num_duplicates": self.duplicates, "images": self.images,
                "skipped": self.skipped, "groups": self.groups, "clusters": self.clusters, "eps": self.threshold}

    def get_metadata(self, key: str):
        return self.metadata.get(key)

    @property
    def pipeline_tasks(self) -> dict[str, list[FileGroupTask]]:
        """As Curator's: per part, tasks naming the files it wrote."""
        return {part: [FileGroupTask(dataset_name="semantic_deduplication", data=list(paths), task_id=part)]
                for part, paths in self.outputs.items()}

    def lines(self) -> list[str]:
        found = (f"duplicates       {self.duplicates} (semantic; eps {self.threshold}, {self.clusters} clusters)"
                 if self.threshold is not None else
                 f"duplicates       not listed (eps=None: similarities in pairwise_results/, {self.clusters} "
                 "clusters)")
        return [f"images           {self.images} ({self.skipped} skipped as unreadable)",
                f"groups           {self.groups}", found,
                f"elapsed          {self.elapsed_seconds:.1f} s"]


WorkflowRunResult = SemanticSummary  # Curator's name for what `run()` returns


@dataclass(frozen=True)
class HashCheck:
    """Perceptual hashes by ID (`codes[x]`: pHash, dHash, vertical dHash of image `ids[x]`; `flipped[x]`:
    its mirror's, or None) that every pair must agree on: the three distances (each the least over the
    mirrors too, with `flipped`) summed within `max_total` bits, and for a pair found by its embeddings
    alone the pHash distance within `max_phash`. Why: the embeddings of smooth skies and of repeated
    textures are close for distinct images, whose hashes are then noise and differ widely."""

    ids: pa.Array
    codes: np.ndarray
    flipped: np.ndarray | None
    max_phash: int
    max_total: int

    def rows(self, ids: pa.Array) -> np.ndarray:
        """The row of each of `ids` in `codes`, -1 where it has no hashes (unreadable)."""
        found = pc.index_in(ids, value_set=self.ids)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def keep(self, a: np.ndarray, b: np.ndarray, max_phash: int) -> np.ndarray:
        """Which pairs of rows (a[k], b[k]) pass: pHash within `max_phash`, all three within `max_total`."""
        from imagesieve.matching.near_search import popcount64

        ok = (a >= 0) & (b >= 0)
        x, y = self.codes[np.where(ok, a, 0)], self.codes[np.where(ok, b, 0)]
        dist = popcount64(x ^ y).astype(np.int64)
        if self.flipped is not None:
            fx, fy = self.flipped[np.where(ok, a, 0)], self.flipped[np.where(ok, b, 0)]
            dist = np.minimum(dist, np.minimum(popcount64(x ^ fy), popcount64(fx ^ y)).astype(np.int64))
        return ok & (dist[:, 0] <= max_phash) & (dist.sum(axis=1) <= self.max_total)


@dataclass(frozen=True)
class ExtraPairs:
    """Pairs found by other means (`find --method semantic`'s pHash pairs), by ID: a duplicate when the
    two embeddings are within `max_distance` (cosine), or always where `exact` (the same bytes). With
    `check`, these pairs (but exact ones) must pass its sum of hash distances, and the pairs the
    embeddings find must pass it all (`HashCheck`)."""

    id_a: pa.Array
    id_b: pa.Array
    exact: np.ndarray
    max_distance: float
    check: HashCheck | None = None


def auto_clusters(n: int) -> int:
    """About sqrt(n) clusters: cost ~ n^1.5 in all, and clusters big enough for k-means to mean much."""
    return max(1, min(n, round(np.sqrt(n))))


class SemanticDeduplicationWorkflow:
    """K-means on the CPU (faiss), then pairwise cosine similarity within clusters; an image within
    `eps` (cosine distance) of a kept image is a duplicate. Parameters as in NeMo Curator where they
    apply; `which_to_keep` takes Curator's "hard" (keep the member farthest from its centroid),
    "easy" (nearest) and "random", and the other finders' "first", "resolution", "file-size" and
    "column:NAME". Unlike Curator, duplicates do not chain (see `dedup.semantic`). `n_clusters=None`
    picks about sqrt(n). `n_probe` and `probe_margin` (default: eps) make a point a guest in up to
    `n_probe - 1` more clusters whose centroids are nearly as near (within the margin of cosine
    similarity), so that pairs split by a boundary are found (recall in BENCHMARKS.md). `max_iter` defaults to 10, not
    Curator's 300: k-means here only splits the work. The constructor does no I/O.

    Curator's other keyword arguments are accepted (`curator_options` says what each means here);
    `read_kwargs` / `write_kwargs` / `cache_kwargs` take `storage_options`, for local paths only.
    `eps=None` lists no duplicates, as in Curator (see the module docstring). `run()` returns a
    `SemanticSummary`, which also reads as Curator's `WorkflowRunResult` (`metadata`, `get_metadata`,
    `pipeline_tasks`).
    """

    def __init__(self, input_path: str | list[str], output_path: str, n_clusters: int | None = None,
                 cache_path: str | None = None, id_field: str | None = None, embedding_field: str = "embeddings",
                 metadata_fields: list[str] | None = None, max_iter: int = 10, random_state: int = 42,
                 fit_data_fraction: float | None = None, which_to_keep: str = "hard", pairwise_batch_size: int = 1024,
                 eps: float | None = 0.05, n_probe: int = 5, probe_margin: float | None = None, verbose: bool = False,
                 read_kwargs: dict | None = None, write_kwargs: dict | None = None, cache_kwargs: dict | None = None,
                 **curator_options) -> None:
        if eps is not None and not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1) (a cosine distance), got {eps}")
        check_curator_options(curator_options)
        for name, kwargs in (("read_kwargs", read_kwargs), ("write_kwargs", write_kwargs),
                             ("cache_kwargs", cache_kwargs)):
            check_io_kwargs(name, kwargs)
        paths = [input_path] if isinstance(input_path, str) else list(input_path)
        remote = [p for p in map(str, [*paths, output_path, cache_path or ""]) if not on_local_file_system(p)]
        if remote:
            raise ValueError(f"SemanticDeduplicationWorkflow reads and writes local (or mounted) folders only, not "
                             f"{remote[0]}; copy the embeddings to local disk (storage_options have nothing to do)")
        if n_clusters is not None and n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        self.keep = keep_policy(which_to_keep, centroids=True, seed=random_state)  # validates
        if fit_data_fraction is not None and not 0 < fit_data_fraction <= 1:
            raise ValueError(f"fit_data_fraction must be in (0, 1], got {fit_data_fraction}")
        self.input_path, self.output_path, self.n_clusters = input_path, output_path, n_clusters
        self.cache_path = cache_path or os.path.join(output_path, WORK_DIR, "semantic")
        self.id_field, self.embedding_field = id_field, embedding_field
        self.metadata_fields = list(metadata_fields or [])
        self.max_iter, self.random_state, self.fit_data_fraction = max_iter, random_state, fit_data_fraction
        self.which_to_keep, self.pairwise_batch_size, self.eps = which_to_keep, pairwise_batch_size, eps
        self.n_probe, self.verbose = n_probe, verbose
        self.probe_margin = (eps or 0.0) if probe_margin is None else probe_margin
        self.curator_options = dict(curator_options)

    def refuse_unsafe_output(self) -> None:
        """Used alone, the workflow keeps the commands' promises: the output folder may not overlap the
        embeddings (its lists would be read back as embeddings), and a folder holding files that are not
        an earlier result of this workflow (a user's summary.json) is refused before anything is written."""
        paths = [self.input_path] if isinstance(self.input_path, str) else list(self.input_path)
        check_input_outside([str(p) for p in paths], self.output_path, what="embeddings")
        summary = os.path.join(self.output_path, "summary.json")
        ours = os.path.isfile(summary) and read_json(summary).get("config", {}).get("method") == "semantic"
        refuse_foreign_files(self.output_path, ours={"duplicates", "groups", "pairwise_results", "skipped.parquet",
                                                     WORK_DIR, *(["summary.json"] if ours else [])},
                             who="this workflow did not write")

    def run(self, executor: BaseExecutor | None = None, progress: bool = False, *,
            kmeans_executor: BaseExecutor | None = None, pairwise_executor: BaseExecutor | None = None,
            extra_pairs: ExtraPairs | None = None, record: dict | None = None) -> SemanticSummary:
        """Curator's `pairwise_executor` is the executor (k-means runs in this process on faiss, so a
        `kmeans_executor` is accepted and not used). `extra_pairs`: more pairs to accept (see
        `ExtraPairs`), labelled "phash" or "exact" in groups/ where they are not within eps. `record`:
        keys for summary.json beside the counts (`find --method semantic`'s configuration and input)."""
        started = time.monotonic()
        executor = executor or pairwise_executor or LocalExecutor()
        if live_holder(self.output_path) is None:  # used alone (a command holds the lock of its own folder)
            self.refuse_unsafe_output()
        os.makedirs(self.output_path, exist_ok=True)
        remove_stale_temp_files(self.output_path)
        memmap = os.path.join(self.cache_path, "embeddings.f32")
        sources = embedding_sources(self.input_path)
        refuse_stale_tables(sources)
        with phase("read embeddings", progress):
            data = load_embeddings(sources, memmap, self.id_field or default_id_field(sources), self.embedding_field,
                                   (*self.keep.reads, *self.metadata_fields))
        timing = {}
        try:
            k = self.n_clusters or auto_clusters(data.n)
            if k > data.n:
                raise ValueError(f"n_clusters is {k}, more than the {data.n} images with embeddings; use at most "
                                 f"{data.n}")
            step = time.monotonic()
            with phase(f"k-means ({k} clusters, {data.n} x {data.dim})", progress):
                labels, sims = self._cluster(data, k)
            timing["kmeans_seconds"], step = time.monotonic() - step, time.monotonic()
            rank = self.keep.rank(pa.table({**{name: data.columns.column(name) for name in data.columns.column_names},
                                             "id": data.ids, CENTROID_SIMILARITY: np.ascontiguousarray(sims[:, 0])}))
            with phase("pairwise similarity within clusters", progress):
                jobs = cluster_jobs(labels, sims, self.probe_margin, 4 * executor.parallelism())
                # eps=None: each image's most similar partner (k=1), however far, to choose eps from
                threshold, top = (1 - self.eps, None) if self.eps is not None else (-2.0, 1)
                results = executor.map(similar_pairs, [(data.path, (data.n, data.dim), job, threshold,
                                                        self.pairwise_batch_size, top) for job in jobs])
            i, j, s = _concat_pairs(results)
            timing["pairwise_seconds"] = time.monotonic() - step
            if self.eps is None:
                return self._write_similarities(data, i, j, s, k, started, timing, record)
            exact = None
            if extra_pairs is not None:
                check = extra_pairs.check
                if check is not None:
                    hash_row = check.rows(data.ids)
                    keep = check.keep(hash_row[i], hash_row[j], check.max_phash)
                    i, j, s = i[keep], j[keep], s[keep]
                ei, ej, es, exact = _extra(data, extra_pairs)
                i, j, s = np.concatenate([i, ei]), np.concatenate([j, ej]), np.concatenate([s, es])
            keeper, similarity = resolve_no_chaining(data.n, i, j, s, rank)
        finally:
            os.remove(data.path)
        groups = groups_table(data.ids, keeper, similarity)
        if exact is not None:
            groups = _label_extra(groups, data, keeper, similarity, self.eps, ei, ej, exact)
        return self._write(data, k, started, timing, list_paths(self.output_path), groups, record)

    def _cluster(self, data: LoadedEmbeddings, k: int) -> tuple[np.ndarray, np.ndarray]:
        return cluster_rows(data.open(), k, self.max_iter, self.random_state, self.n_probe, self.fit_data_fraction)

    def _write_similarities(self, data: LoadedEmbeddings, i: np.ndarray, j: np.ndarray, s: np.ndarray, k: int,
                            started: float, timing: dict, record: dict | None) -> SemanticSummary:
        """eps=None: each image's most similar partner (a pair counts for both sides); -1 when none."""
        best = np.full(data.n, np.nan, dtype=np.float64)
        partner = np.full(data.n, -1, dtype=np.int64)
        rows, others, sims = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([s, s])
        order = np.lexsort((sims, rows))  # by row, then similarity ascending: a row's last entry is its best
        rows, others, sims = rows[order], others[order], sims[order]
        last = np.flatnonzero(np.r_[rows[1:] != rows[:-1], True]) if len(rows) else np.zeros(0, np.int64)
        partner[rows[last]], best[rows[last]] = others[last], sims[last]
        found = partner >= 0
        max_ids = data.ids.take(pa.array(np.where(found, partner, 0)))
        table = pa.table({"id": data.ids,
                          "max_id": pc.if_else(pa.array(found), max_ids, pa.nulls(data.n, pa.string())),
                          "cosine_sim_score": pa.array(best, pa.float64(), from_pandas=True)})
        path = os.path.join(self.output_path, "pairwise_results", "part-00000.parquet")
        write_parquet_atomic(table, path)
        return self._write(data, k, started, timing, {"pairwise": [path]}, None, record)

    def _write(self, data: LoadedEmbeddings, k: int, started: float, timing: dict, outputs: dict,
               groups: pa.Table | None, record: dict | None) -> SemanticSummary:
        config = {name: getattr(self, name) for name in ("n_clusters", "id_field", "embedding_field", "max_iter",
                                                         "random_state", "fit_data_fraction", "which_to_keep",
                                                         "eps", "n_probe", "probe_margin")}
        return write_find_outputs(self.output_path, groups, data.skipped, lambda found: SemanticSummary(
            images=data.n + data.skipped.num_rows, skipped=data.skipped.num_rows, groups=found["groups"],
            duplicates=found["duplicates"], clusters=k, threshold=self.eps,
            by_method=found["by_method"] or {"semantic": 0}, elapsed_seconds=time.monotonic() - started,
            outputs=outputs, **timing), {"config": {"method": "semantic", **config}, **(record or {})})


def _extra(data: LoadedEmbeddings, extra: ExtraPairs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, similarity, exact) of the extra pairs that are accepted, as rows of `data`; pairs with an
    image that has no embedding (unreadable) are dropped."""
    ia, ja = (pc.index_in(ids, value_set=data.ids) for ids in (extra.id_a, extra.id_b))
    known = pc.and_(pc.is_valid(ia), pc.is_valid(ja)).to_numpy(zero_copy_only=False)
    i, j = (a.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)[known] for a in (ia, ja))
    exact = extra.exact[known]
    vectors = data.open()
    sim = np.zeros(len(i), np.float32)
    for start in range(0, len(i), 1 << 16):
        a, b = i[start:start + (1 << 16)], j[start:start + (1 << 16)]
        sim[start:start + len(a)] = np.einsum("ij,ij->i", vectors[a], vectors[b])
    accept = sim >= 1 - extra.max_distance
    if extra.check is not None:
        hash_row = extra.check.rows(data.ids)
        accept &= extra.check.keep(hash_row[i], hash_row[j], 64)
    accept |= exact
    return i[accept], j[accept], sim[accept], exact[accept]


def _label_extra(groups: pa.Table, data: LoadedEmbeddings, keeper: np.ndarray, similarity: np.ndarray, eps: float,
                 ei: np.ndarray, ej: np.ndarray, exact: np.ndarray) -> pa.Table:
    """groups/ with each removed image's method: "exact" when it and its kept image are the same bytes,
    "phash" when only the pHash pair made it a duplicate, else "semantic"."""
    n = data.n
    pair = np.minimum(ei, ej) * n + np.maximum(ei, ej)
    removed = np.flatnonzero(keeper != np.arange(n))
    found = np.minimum(removed, keeper[removed]) * n + np.maximum(removed, keeper[removed])
    exact_pairs = np.unique(pair[exact])
    method = np.where(np.isin(found, exact_pairs), "exact",
                      np.where(similarity[removed] >= 1 - eps, "semantic", "phash"))
    kept = groups.num_rows - len(removed)  # groups_table: the kept rows first, then the removed in row order
    return groups.set_column(groups.schema.get_field_index("method"), "method",
                             pa.array(["kept"] * kept + method.tolist(), pa.string()))


def _concat_pairs(results: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not results:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return tuple(np.concatenate([r[k] for r in results]) for k in range(3))


def groups_table(ids: pa.Array, keeper: np.ndarray, similarity: np.ndarray, method: str = "semantic") -> pa.Table:
    """The finders' groups layout: a row per kept image that keeps others ("kept"), a row per removed one."""
    n = len(keeper)
    removed = np.flatnonzero(keeper != np.arange(n))
    kept_rows = np.unique(keeper[removed])
    group_ids = np.concatenate([np.arange(len(kept_rows)), np.searchsorted(kept_rows, keeper[removed])])
    sim = np.concatenate([np.ones(len(kept_rows)), similarity[removed].astype(np.float64)])
    return pa.table({
        "group_id": pa.array(group_ids, pa.int64()),
        "kept_id": pa.concat_arrays([ids.take(pa.array(kept_rows)), ids.take(pa.array(keeper[removed]))]),
        "id": pa.concat_arrays([ids.take(pa.array(kept_rows)), ids.take(pa.array(removed))]),
        "method": pa.array(["kept"] * len(kept_rows) + [method] * len(removed), pa.string()),
        "distance": pa.array(np.clip(1 - sim, 0, None), pa.float64()),
        "similarity": pa.array(sim, pa.float64()),
    })

"""`find --method copy`: cheap candidates, precise verification.

1. Per shard, once (reused by reruns while the shard is unchanged): pHash and its mirror
   (`OUT/hashes/`), two embeddings of the image's centre (`OUT/embeddings/`, the semantic finder's
   model, see `CENTRES`) and SIFT keypoints at a bounded size (`OUT/keypoints/`).
2. Exact copies (same bytes) are grouped first; the rest is searched with one image per exact group.
3. Candidates: each image's `neighbours` nearest images by embedding (each view searched as a row of
   its own) with cosine similarity at least `min_similarity` (k-means, then nearest neighbours within
   clusters: sub-quadratic), plus every pair within `hash_threshold` bits of pHash, mirror included
   (multi-index hashing).
4. Verification (`dedup.copy_match`), in jobs grouped by shard: a pair is a copy when at least
   `min_inliers` keypoints agree on one similarity transform (mirror tried too), their hull covers
   at least `min_coverage` of each image, and under that transform the pixels of the two agree over
   at least `min_agreement` of one of them (two tiles of a repetitive texture pass the first two and
   fail this); or when its pHash distance is within `hash_accept`, the
   pHash finder's precise default, which keeps featureless and heavily recompressed copies that
   carry too few keypoints (`hash_accept=-1` turns that off).
5. Groups without chaining, in keep order (`dedup.semantic.resolve_no_chaining`).

OUT/duplicates/part-00000.parquet   `id`: the images to remove
OUT/groups/part-00000.parquet       group_id, kept_id, id, method ("kept" | "exact" | "copy"),
                                    distance (1 - coverage), inliers, coverage
OUT/copy_pairs.parquet              every candidate pair with its scores and the decision
OUT/skipped.parquet, OUT/summary.json   as the other finders
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.copy_jobs import ROW_GROUP, verification_jobs, verify_job
from imagesieve.matching.copy_match import DEFAULT_FEATURES, DEFAULT_MAX_SIDE
from imagesieve.matching.embeddings_io import load_embeddings
from imagesieve.matching.groups import group_exact
from imagesieve.matching.keep import keep_policy
from imagesieve.matching.near_search import near_pairs, popcount64
from imagesieve.matching.semantic import cluster_jobs, cluster_rows, resolve_no_chaining, similar_pairs
from imagesieve.pipeline.inputs import InputUnit, check_input_outside
from imagesieve.progress import phase
from imagesieve.stages.copy import ImageKeypointStage
from imagesieve.stages.hashing import HashWriterStage
from imagesieve.stages.hashing.hash_writer import hash_table_path
from imagesieve.storage import as_given
from imagesieve.storage.runfolder import WORK_DIR, remove_stale_temp_files, write_parquet_atomic
from imagesieve.tar.names import IMAGE_RULE
from imagesieve.workflows.common import absolute_paths, given_paths, reader_for, run_in_locked_folder, run_on_units
from imagesieve.workflows.find import (
    MAX_THRESHOLD,
    FindConfig,
    check_unique_ids,
    hash_shards,
    load_hashes,
    near_edges,
    split_readable,
    table_is_current,
)
from imagesieve.workflows.find_outputs import write_find_outputs
from imagesieve.workflows.semantic import auto_clusters, groups_table
from imagesieve.workflows.semantic_find import SemanticConfig, check_model_option, embed_shards

# embeddings of the central 70% of each side: free of the borders a rotation adds, of caption bars over
# the bottom 15%, and of most of what a crop removes (rotated copies: neighbour rank < 5 for 0.90 -> 1.00);
# and of the central 56%, which is what the central 70% of a 20% crop shows (crops: candidates 0.92 -> 1.00)
CENTRES = (0.7, 0.56)
INPUT_SIZE = 96  # the default model at 96 pixels: as good candidates as at 224, 6x less work (BENCHMARKS.md)
PROBE_MARGIN = 0.05  # an image also searches clusters whose centroid is this nearly as similar


@dataclass(frozen=True)
class CopyConfig:
    """Settings of `find --method copy`; defaults chosen on the labelled photos (BENCHMARKS.md)."""

    neighbours: int = 10
    min_similarity: float = 0.5
    hash_threshold: int = 16
    min_inliers: int = 10
    min_coverage: float = 0.15
    min_agreement: float = 0.68
    hash_accept: int = 10
    max_side: int = DEFAULT_MAX_SIDE
    features: int = DEFAULT_FEATURES
    keep: str = "first"
    clusters: int | None = None
    model: str = "default"
    model_inference_batch_size: int = 32
    on_error: str = "fail"
    json_fields: tuple[str, ...] = ()
    random_state: int = 42
    method: str = field(default="copy", init=False)

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise ValueError(f"neighbours must be 1 or more, got {self.neighbours}")
        if not -1 <= self.min_similarity < 1:
            raise ValueError(f"min_similarity is a cosine similarity in [-1, 1), got {self.min_similarity}")
        if not 0 <= self.hash_threshold <= MAX_THRESHOLD or not -1 <= self.hash_accept <= MAX_THRESHOLD:
            raise ValueError(f"hash_threshold must be in 0..{MAX_THRESHOLD} and hash_accept in -1..{MAX_THRESHOLD} "
                             f"bits, got {self.hash_threshold} and {self.hash_accept}")
        if self.features < self.min_inliers:
            raise ValueError(f"features must be at least min_inliers ({self.min_inliers}), got {self.features}")
        if self.min_inliers < 3 or not 0 <= self.min_coverage <= 1 or not 0 <= self.min_agreement <= 1:
            raise ValueError(f"min_inliers must be 3 or more and min_coverage and min_agreement in [0, 1], got "
                             f"{self.min_inliers}, {self.min_coverage} and {self.min_agreement}")
        keep_policy(self.keep)  # validates
        check_model_option(self.model)  # before any image is hashed


@dataclass
class CopySummary:
    images: int
    skipped: int
    groups: int
    duplicates: int
    candidates: int  # pairs verified
    by_method: dict[str, int] = field(default_factory=dict)
    threshold: str = ""
    elapsed_seconds: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    def lines(self) -> list[str]:
        methods = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_method.items())) or "none"
        return [f"images           {self.images} ({self.skipped} skipped as unreadable)",
                f"candidates       {self.candidates} pairs verified",
                f"groups           {self.groups}",
                f"duplicates       {self.duplicates} ({methods}; {self.threshold})",
                f"elapsed          {self.elapsed_seconds:.1f} s"]


def find_copies(input_path: str | list[str], output_dir: str, config: CopyConfig = CopyConfig(),
                executor: BaseExecutor | None = None, progress: bool = False) -> CopySummary:
    """Hash, embed and extract keypoints; search candidates; verify; write duplicates/ and groups/."""
    input_path, output_dir = given_paths(input_path), as_given(output_dir)
    return run_in_locked_folder(input_path, output_dir, "find", lambda: find_copies_in_locked_folder(
        input_path, output_dir, config, executor, progress), config=config)


def find_copies_in_locked_folder(input_path: str | list[str], output_dir: str, config: CopyConfig,
                                 executor: BaseExecutor | None, progress: bool) -> CopySummary:
    """`find_copies` for a caller that holds the output folder's lock."""
    started = time.monotonic()
    seconds: dict[str, float] = {}
    check_input_outside(input_path, output_dir)
    if config.keep.startswith("column:") and not config.json_fields:
        config = replace(config, json_fields=(config.keep.split(":", 1)[1],))
    remove_stale_temp_files(output_dir)
    executor = executor or LocalExecutor()
    hashing = FindConfig(method="phash", flip=True, threshold=config.hash_threshold, keep=config.keep, confirm=False,
                         on_error=config.on_error, json_fields=config.json_fields)
    clock = time.monotonic()
    units = hash_shards(input_path, output_dir, os.path.join(output_dir, "hashes"), hashing, executor, progress,
                        "hash")
    table, skipped = split_readable(_checked(load_hashes(os.path.join(output_dir, "hashes"), units)))
    embedding_files = embed_shards(units, os.path.join(output_dir, "embeddings"),
                                   SemanticConfig(model=config.model, on_error=config.on_error,
                                                  model_inference_batch_size=config.model_inference_batch_size),
                                   executor, progress, centres=CENTRES,
                                   input_size=INPUT_SIZE if config.model == "default" else None)
    keypoint_files = extract_keypoints(units, os.path.join(output_dir, "keypoints"), config, executor, progress)
    seconds["per image"] = time.monotonic() - clock

    rank = keep_policy(config.keep).rank(table)
    bytes_label = pc.dictionary_encode(table.column("bytes_hash")).combine_chunks().indices.to_numpy()
    rep = group_exact([bytes_label], rank)
    clock = time.monotonic()
    with phase("candidates", progress):
        i, j, source = _candidates(table, rep, embedding_files, output_dir, config, hashing, executor)
    seconds["candidates"] = time.monotonic() - clock
    clock = time.monotonic()
    with phase(f"verify {len(i)} pairs", progress):
        scores = _verify(table, keypoint_files, units, i, j, executor)
    seconds["verify"] = time.monotonic() - clock
    codes = table.column("phash").to_numpy().astype(np.uint64)
    hash_distance = popcount64(codes[i] ^ codes[j])
    coverage = np.minimum(scores["coverage_a"], scores["coverage_b"])
    accepted = is_copy(scores["inliers"], coverage, scores["agreement"], hash_distance, config)
    keeper_of_rep, _ = resolve_no_chaining(table.num_rows, i[accepted], j[accepted],
                                           (coverage + scores["inliers"] * 1e-6)[accepted], rank)
    keeper = keeper_of_rep[rep]
    groups = _groups(table, keeper, rep, i, j, scores, coverage)
    ids = table.column("id").combine_chunks()
    write_parquet_atomic(pa.table({"id_a": ids.take(pa.array(i)), "id_b": ids.take(pa.array(j)), "source": source,
                                   "hash_distance": pa.array(hash_distance, pa.int64()),
                                   **{k: pa.array(v) for k, v in scores.items()}, "copy": pa.array(accepted)}),
                         os.path.join(output_dir, "copy_pairs.parquet"))
    run = {"config": asdict(config), "input": absolute_paths(input_path), "input_root": units[0].root or None,
           "reference": None}
    return write_find_outputs(output_dir, groups, skipped, lambda found: CopySummary(
        images=table.num_rows + skipped.num_rows, skipped=skipped.num_rows, **found, candidates=len(i),
        threshold=f"{config.min_inliers} inliers, coverage {config.min_coverage}, agreement {config.min_agreement}",
        elapsed_seconds=time.monotonic() - started, seconds=seconds), run)


def is_copy(inliers: np.ndarray, coverage: np.ndarray, agreement: np.ndarray, hash_distance: np.ndarray,
            config: CopyConfig) -> np.ndarray:
    """The decision on verified pairs (see the module docstring, step 4)."""
    keypoints = (inliers >= config.min_inliers) & (coverage >= config.min_coverage)
    return (keypoints & (agreement >= config.min_agreement)) | (hash_distance <= config.hash_accept)


def extract_keypoints(units: list[InputUnit], keypoints_dir: str, config: CopyConfig, executor: BaseExecutor,
                      progress: bool) -> list[str]:
    """Keypoint tables of every shard whose table is missing or stale; returns them in shard order."""
    settings = {"max_side": config.max_side, "features": config.features, "image_rule": IMAGE_RULE}
    paths = [hash_table_path(keypoints_dir, unit.rel) for unit in units]
    todo = [unit for unit, path in zip(units, paths, strict=True)
            if not table_is_current(path, unit.fingerprint, {"kp_points", "kp_thumb"}, settings)]
    stages = [reader_for(units), ImageKeypointStage(max_side=config.max_side, features=config.features,
                                                  on_error=config.on_error),
              HashWriterStage(hashes_dir=keypoints_dir, settings=settings, row_group_size=ROW_GROUP)]
    run_on_units("keypoints", stages, todo, len(units), executor, progress)
    return paths


def _checked(table: pa.Table) -> pa.Table:
    check_unique_ids(table, "input")
    return table


def _candidates(table: pa.Table, rep: np.ndarray, embedding_files: list[str], output_dir: str, config: CopyConfig,
                hashing: FindConfig, executor: BaseExecutor) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(i, j, source) of every candidate pair of exact-group representatives, i < j, each pair once;
    source is "hash", "embedding" or "both"."""
    reps = np.flatnonzero(rep == np.arange(table.num_rows))
    search = partial(near_pairs, parts=executor.parallelism(), run_jobs=executor.map)
    codes = table.column("phash").to_numpy().astype(np.uint64)[reps]
    hi, hj = near_edges(codes, config.hash_threshold, hashing, table, reps, search)
    by_hash = _pair_codes(reps[hi], reps[hj], table.num_rows)
    by_embedding = _pair_codes(*_embedding_pairs(table, embedding_files, output_dir, config, executor),
                               table.num_rows, rep)
    both = np.union1d(by_hash, by_embedding)
    in_hash, in_embedding = np.isin(both, by_hash), np.isin(both, by_embedding)
    source = np.where(in_hash & in_embedding, "both", np.where(in_hash, "hash", "embedding"))
    i, j = np.divmod(both, table.num_rows)
    return i, j, pa.array(source, pa.string())


def _pair_codes(i: np.ndarray, j: np.ndarray, n: int, rep: np.ndarray | None = None) -> np.ndarray:
    """Sorted unique min * n + max of the pairs (after mapping rows to `rep`), self-pairs dropped."""
    if rep is not None:
        i, j = rep[i], rep[j]
    a, b = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    return np.unique(a[a != b] * n + b[a != b])


def _embedding_pairs(table: pa.Table, files: list[str], output_dir: str, config: CopyConfig,
                     executor: BaseExecutor) -> tuple[np.ndarray, np.ndarray]:
    """Each image's nearest neighbours by embedding, as table rows. Each view of an image (`CENTRES`)
    is searched as a row of its own, so a crop's wide view finds its original's narrow one."""
    memmap = os.path.join(output_dir, WORK_DIR, "copy", "embeddings.f32")
    data = load_embeddings(files, memmap)
    views = len(CENTRES)
    try:
        row_of = pc.index_in(data.ids, value_set=table.column("id")).to_numpy(zero_copy_only=False)
        if data.n < 2:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        shape = (data.n * views, data.dim // views)
        _unit_views(data.path, shape, views)
        k = min(config.clusters or auto_clusters(shape[0]), shape[0])
        labels, sims = cluster_rows(np.memmap(data.path, np.float32, "r", shape=shape), k, 10, config.random_state,
                                    probes=3)
        jobs = cluster_jobs(labels, sims, PROBE_MARGIN, 4 * executor.parallelism())
        found = executor.map(similar_pairs, [(data.path, shape, job, config.min_similarity, 1024, config.neighbours)
                                             for job in jobs])
    finally:
        os.remove(data.path)
    i = np.concatenate([np.zeros(0, np.int64), *(f[0] for f in found)]) // views
    j = np.concatenate([np.zeros(0, np.int64), *(f[1] for f in found)]) // views
    i, j = row_of[i], row_of[j]
    usable = (i >= 0) & (j >= 0)  # an image unreadable for hashing has no row
    return i[usable].astype(np.int64), j[usable].astype(np.int64)


def _unit_views(path: str, shape: tuple[int, int], views: int, chunk: int = 1 << 16) -> None:
    """Rows of `views` unit views side by side have length 1; scale them in place so each view has."""
    if views > 1:
        rows = np.memmap(path, np.float32, "r+", shape=shape)
        for start in range(0, shape[0], chunk):
            rows[start:start + chunk] *= np.float32(np.sqrt(views))
        rows.flush()


def _verify(table: pa.Table, keypoint_files: list[str], units: list[InputUnit], i: np.ndarray, j: np.ndarray,
            executor: BaseExecutor) -> dict[str, np.ndarray]:
    """Scores of every pair, in pair order."""
    file_index = {unit.rel: k for k, unit in enumerate(units)}
    file_of = np.array([file_index[s] for s in table.column("shard").to_pylist()], np.int64)
    position = table.column("position").to_numpy()
    jobs = verification_jobs(keypoint_files, file_of, position, i, j, parallelism=executor.parallelism())
    scores = {"inliers": np.zeros(len(i), np.int32), "coverage_a": np.zeros(len(i), np.float32),
              "coverage_b": np.zeros(len(i), np.float32), "mirrored": np.zeros(len(i), bool),
              "agreement": np.zeros(len(i), np.float32)}
    for index, *values in executor.map(verify_job, jobs) if jobs else []:
        for name, value in zip(scores, values, strict=True):
            scores[name][index] = value
    return scores


def _groups(table: pa.Table, keeper: np.ndarray, rep: np.ndarray, i: np.ndarray, j: np.ndarray,
            scores: dict[str, np.ndarray], coverage: np.ndarray) -> pa.Table:
    """The finders' groups layout, with the inlier count and coverage of each removed image's match
    to its kept image (an exact copy: no inliers, coverage 1)."""
    n = table.num_rows
    removed = np.flatnonzero(keeper != np.arange(n))
    exact = rep[removed] == rep[keeper[removed]]
    pair = np.minimum(rep[removed], keeper[removed]).astype(np.int64) * n + np.maximum(rep[removed], keeper[removed])
    found = np.searchsorted(i.astype(np.int64) * n + j, pair)  # the pairs are sorted by (i, j)
    found = np.where(exact, 0, found)
    cov = np.ones(n)
    cov[removed] = np.where(exact, 1.0, coverage[found] if len(i) else 1.0)
    groups = groups_table(table.column("id").combine_chunks(), keeper, cov, "copy")
    inliers = np.where(exact, -1, scores["inliers"][found] if len(i) else -1)
    kept_count = groups.num_rows - len(removed)
    method = ["kept"] * kept_count + np.where(exact, "exact", "copy").tolist()
    return pa.table({
        "group_id": groups.column("group_id"), "kept_id": groups.column("kept_id"), "id": groups.column("id"),
        "method": pa.array(method, pa.string()), "distance": groups.column("distance"),
        "inliers": pa.array(np.concatenate([np.full(kept_count, -1), inliers]), pa.int64(),
                            mask=np.concatenate([np.ones(kept_count, bool), exact])),
        "coverage": groups.column("similarity"),
    })


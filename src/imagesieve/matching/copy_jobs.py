"""Verifying candidate pairs on an executor: jobs grouped by shard, keypoints read per image.

Keypoints sit in one Parquet table per shard (`OUT/keypoints/<shard>.parquet`, row = the image's
position in its shard) written in small row groups, so a job reads exactly the groups holding the
images of its pairs, each once, however many pairs an image is in. A job holds the pairs whose first
image lies in one shard (cut into pieces of at most `MAX_JOB_PAIRS`), so most of its reads are of one
file; the second image may lie in any shard.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from imagesieve.matching.copy_match import RATIO, Keypoints, Match, verify_many

ROW_GROUP = 32  # rows per row group of a keypoint table
MAX_JOB_PAIRS = 4000
MIN_JOB_PAIRS = 256
MAX_OTHERS = 32  # images matched against one in one matrix product (bounds its memory)
COLUMNS = ["kp_width", "kp_height", "kp_points", "kp_descriptors", "kp_thumb"]


def verification_jobs(files: list[str], file_of: np.ndarray, position: np.ndarray, i: np.ndarray, j: np.ndarray,
                      ratio: float = RATIO, parallelism: int = 1) -> list[tuple]:
    """Jobs for `verify_job`: pairs (i, j) of table rows, grouped by the shard of i. `file_of[row]`
    indexes `files`; `position[row]` is the row's place in its shard's table. Each job also carries
    the indices of its pairs, to put the results back in order. Jobs are cut small enough that
    `parallelism` workers get about four each (a few shards would otherwise leave workers idle)."""
    order = np.lexsort((j, position[i], file_of[i]))
    shard, first = file_of[i][order], i[order]
    size = min(MAX_JOB_PAIRS, max(MIN_JOB_PAIRS, -(-len(i) // (4 * parallelism))))
    jobs = []
    for start, end in _runs(shard):
        # cut between first images only: an image's pairs are verified together, whatever the cut, so
        # the result does not depend on the number of workers (nor on float rounding of another grouping)
        bounds = np.array([b for b, _ in _runs(first[start:end])])
        near = np.searchsorted(bounds, np.arange(size, end - start, size))
        cuts = sorted({0, *bounds[near[near < len(bounds)]].tolist()})
        for a, b in zip(cuts, [*cuts[1:], end - start], strict=True):
            take = order[start + a:start + b]
            jobs.append((files, file_of[i[take]], position[i[take]], file_of[j[take]], position[j[take]], ratio,
                         take))
    return jobs


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    if len(values) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return list(zip(starts.tolist(), np.r_[starts[1:], len(values)].tolist(), strict=True))


def verify_job(files: list[str], a_file: np.ndarray, a_pos: np.ndarray, b_file: np.ndarray, b_pos: np.ndarray,
               ratio: float, index: np.ndarray) -> tuple[np.ndarray, ...]:
    """(index, inliers, coverage_a, coverage_b, mirrored, agreement) of every pair of the job. One executor job.
    The pairs of one first image (adjacent: jobs are sorted by it) are verified together."""
    from threadpoolctl import threadpool_limits

    cache = _KeypointCache(files)
    out: list[Match] = []
    with threadpool_limits(1, "blas"):  # the executor already runs one job per core
        for start, end in _runs(a_file * (int(a_pos.max(initial=0)) + 1) + a_pos):
            others = [cache.get(fb, pb) for fb, pb in zip(b_file[start:end].tolist(), b_pos[start:end].tolist(),
                                                          strict=True)]
            for piece in range(0, len(others), MAX_OTHERS):
                out += verify_many(cache.get(int(a_file[start]), int(a_pos[start])), others[piece:piece + MAX_OTHERS],
                                   ratio)
    return (index, np.array([m.inliers for m in out], np.int32), np.array([m.coverage_a for m in out], np.float32),
            np.array([m.coverage_b for m in out], np.float32), np.array([m.mirrored for m in out], bool),
            np.array([m.agreement for m in out], np.float32))


class _KeypointCache:
    """Row groups of keypoint tables, each read once per job."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.opened: dict[int, pq.ParquetFile] = {}
        self.groups: dict[tuple[int, int], list[dict]] = {}

    def get(self, file: int, position: int) -> Keypoints:
        group = position // ROW_GROUP
        if (file, group) not in self.groups:
            if file not in self.opened:
                self.opened[file] = pq.ParquetFile(self.files[file])
            rows = self.opened[file].read_row_group(group, columns=COLUMNS).to_pylist()
            self.groups[file, group] = rows
        row = self.groups[file, group][position % ROW_GROUP]
        if row["kp_points"] is None:
            raise ValueError(f"{self.files[file]} row {position}: no keypoints (the image could not be read)")
        return Keypoints.from_columns(row)

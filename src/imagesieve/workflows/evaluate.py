"""Quality of perceptual-hash matching on a labelled set of real photographs.

The set: distinct photo tiles (`sample_data.distinct_images`) plus known transforms of each
(resize, JPEG recompression, crop, brightness, format change, horizontal flip). Two images are
duplicates exactly when they come from the same tile. Every pair of images is scored, so
precision counts every false match a real run would make.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imagesieve.matching.hashes import PERCEPTUAL, hash_image
from imagesieve.matching.near_search import popcount64
from imagesieve.workflows.sample_data import HASH_TRANSFORMS, TRANSFORMS, distinct_images, encode


@dataclass
class LabelledSet:
    images: list[bytes]
    source: np.ndarray  # index of the original tile each image comes from
    transform: list[str]  # "original" or a TRANSFORMS name


@dataclass
class Score:
    method: str
    threshold: int
    precision: float
    recall: float
    f1: float
    recall_by_transform: dict[str, float]


def build_labelled_set(transforms: tuple[str, ...] = HASH_TRANSFORMS, tile: int = 128) -> LabelledSet:
    images, source, names = [], [], []
    for index, (_, image) in enumerate(distinct_images(tile)):
        original = encode(image)
        images.append(original)
        source.append(index)
        names.append("original")
        for name in transforms:
            data, _ = TRANSFORMS[name].apply(image, original)
            images.append(data)
            source.append(index)
            names.append(name)
    return LabelledSet(images, np.array(source), names)


def hash_set(labelled: LabelledSet, method: str, flip: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    values = [hash_image(data, (method,), f"image {i}", flip=flip).values for i, data in enumerate(labelled.images)]
    codes = np.array([v[method] for v in values], dtype=np.uint64)
    flipped = np.array([v[f"{method}_flip"] for v in values], dtype=np.uint64) if flip else None
    return codes, flipped


def pair_distances(codes: np.ndarray, flipped: np.ndarray | None = None) -> np.ndarray:
    dist = popcount64(codes[:, None] ^ codes[None, :])
    if flipped is not None:
        dist = np.minimum(dist, popcount64(codes[:, None] ^ flipped[None, :]))
        dist = np.minimum(dist, dist.T)
    return dist


def score(labelled: LabelledSet, dist: np.ndarray, method: str, threshold: int,
          exclude: tuple[str, ...] = ()) -> Score:
    """Precision, recall, F1 over all pairs of distinct images (pairs involving `exclude` transforms skipped)."""
    names = np.array(labelled.transform)
    use = ~np.isin(names, exclude)
    upper = np.triu(np.ones_like(dist, dtype=bool), k=1) & use[:, None] & use[None, :]
    same = labelled.source[:, None] == labelled.source[None, :]
    predicted = dist <= threshold
    tp = int((predicted & same & upper).sum())
    fp = int((predicted & ~same & upper).sum())
    fn = int((~predicted & same & upper).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    originals = np.flatnonzero(names == "original")
    original_of = np.full(int(labelled.source.max()) + 1, -1)  # source tile -> row of its original
    original_of[labelled.source[originals]] = originals
    by_transform = {}
    for name in sorted(set(labelled.transform) - {"original"}):
        rows = np.flatnonzero(names == name)
        by_transform[name] = float((dist[rows, original_of[labelled.source[rows]]] <= threshold).mean())
    return Score(method, threshold, precision, recall, f1, by_transform)


def sweep(labelled: LabelledSet, methods: tuple[str, ...] = tuple(PERCEPTUAL), thresholds: range = range(0, 17),
          flip: bool = False, exclude: tuple[str, ...] = ("hflip",)) -> list[Score]:
    scores = []
    for method in methods:
        dist = pair_distances(*hash_set(labelled, method, flip))
        scores.extend(score(labelled, dist, method, t, exclude) for t in thresholds)
    return scores


def split(labelled: LabelledSet, half: int) -> np.ndarray:
    """Rows of one half of the set, split by source tile (every copy of a tile lands in the same half),
    so that a threshold chosen on one half can be scored on images it has never seen."""
    return np.flatnonzero(labelled.source % 2 == half)


def subset(labelled: LabelledSet, rows: np.ndarray) -> LabelledSet:
    return LabelledSet([labelled.images[i] for i in rows], labelled.source[rows],
                       [labelled.transform[i] for i in rows])


def held_out(labelled: LabelledSet, dist: np.ndarray, method: str, thresholds: range = range(0, 17),
             exclude: tuple[str, ...] = ("hflip",)) -> tuple[int, Score]:
    """The threshold with the best F1 on the tuning half (even tiles), and its score on the other half."""
    tune, test = split(labelled, 0), split(labelled, 1)
    tuned = [score(subset(labelled, tune), dist[np.ix_(tune, tune)], method, t, exclude) for t in thresholds]
    best = max(tuned, key=lambda s: (s.f1, -s.threshold)).threshold
    return best, score(subset(labelled, test), dist[np.ix_(test, test)], method, best, exclude)

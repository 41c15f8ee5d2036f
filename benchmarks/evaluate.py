"""Quality of perceptual-hash matching on a labelled set of real photographs.

The set: distinct photo tiles (`sample_data.distinct_images`) plus known transforms of each
(resize, JPEG recompression, crop, brightness, format change, horizontal flip). Two images are
duplicates exactly when they come from the same tile. Every pair of images is scored, so
precision counts every false match a real run would make.
"""

from __future__ import annotations

import os
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
    photo: np.ndarray | None = None  # index of the photo the tile was cut from: its family, for `split`


@dataclass
class Score:
    method: str
    threshold: int
    precision: float
    recall: float
    f1: float
    recall_by_transform: dict[str, float]


def build_labelled_set(transforms: tuple[str, ...] = HASH_TRANSFORMS, tile: int = 128,
                       photos: list[tuple[str, np.ndarray]] | None = None) -> LabelledSet:
    """Tiles of the bundled photos (or of `photos`, see `photos_in`) and the transforms of each."""
    images, source, names = [], [], []
    tiles = distinct_images(tile, photos)
    for index, (_, image) in enumerate(tiles):
        original = encode(image)
        images.append(original)
        source.append(index)
        names.append("original")
        for name in transforms:
            data, _ = TRANSFORMS[name].apply(image, original)
            images.append(data)
            source.append(index)
            names.append(name)
    photos = photo_of([name for name, _ in tiles])
    return LabelledSet(images, np.array(source), names, photos[np.array(source)])


# photos of Debian's `opencv-doc` (examples/data), one of each stereo or sequence pair (aloeL, not aloeR):
# real photographs (and one painting) that no setting of imagesieve was chosen on
FRESH_PHOTOS = ("aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "board.jpg",
                "box_in_scene.png", "building.jpg", "butterfly.jpg", "chicky_512.png", "ela_original.jpg",
                "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg",
                "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg", "starry_night.jpg")


def photos_in(folder: str, names: tuple[str, ...] | None = None) -> list[tuple[str, np.ndarray]]:
    """(name, RGB array) of the images in `folder` (only `names`, when given): photos no setting was
    chosen on, for figures that are held out from every choice."""
    from PIL import Image

    files = sorted(names or (f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png"))))
    return [(os.path.splitext(f)[0].replace("_r", "-r"), np.asarray(Image.open(os.path.join(folder, f)).convert("RGB")))
            for f in files]


def photo_of(tile_names: list[str]) -> np.ndarray:
    """The photo index of each tile (`distinct_images` names tiles PHOTO_rROWcCOL)."""
    names = [name.rsplit("_r", 1)[0] for name in tile_names]
    return np.unique(names, return_inverse=True)[1]


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


SPLIT_SEED = 0  # the published held-out figures use this split


def split(labelled: LabelledSet, half: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Rows of one half of the set, split by source photo: every tile of a photo, and every copy of
    those tiles, lands in the same half (neighbouring tiles of one photo, the hard negatives, never
    straddle it), so that a setting chosen on half 0 is scored on half 1 on photos it has never seen.
    Photos are taken in a seeded random order, each into the half with fewer images so far. A set
    without photos (`photo` None) is split by source tile parity, as before."""
    if labelled.photo is None:
        return np.flatnonzero(labelled.source % 2 == half)
    counts = np.bincount(labelled.photo)
    sizes, side = [0, 0], np.zeros(len(counts), np.int64)
    for photo in np.random.default_rng(seed).permutation(len(counts)):
        side[photo] = int(sizes[1] < sizes[0])
        sizes[side[photo]] += int(counts[photo])
    return np.flatnonzero(side[labelled.photo] == half)


def subset(labelled: LabelledSet, rows: np.ndarray) -> LabelledSet:
    return LabelledSet([labelled.images[i] for i in rows], labelled.source[rows],
                       [labelled.transform[i] for i in rows],
                       None if labelled.photo is None else labelled.photo[rows])


def held_out(labelled: LabelledSet, dist: np.ndarray, method: str, thresholds: range = range(0, 17),
             exclude: tuple[str, ...] = ("hflip",)) -> tuple[int, Score]:
    """The threshold with the best F1 on the tuning half (`split` 0), and its score on the other half."""
    tune, test = split(labelled, 0), split(labelled, 1)
    tuned = [score(subset(labelled, tune), dist[np.ix_(tune, tune)], method, t, exclude) for t in thresholds]
    best = max(tuned, key=lambda s: (s.f1, -s.threshold)).threshold
    return best, score(subset(labelled, test), dist[np.ix_(test, test)], method, best, exclude)

"""Geometric verification of candidate copies: SIFT keypoints (OpenCV), ratio-test matching and a
RANSAC similarity fit (rotation, scale, translation), scored by the inlier count and the share of
each image that the inliers cover.

Two images are copies when many keypoints agree on one transform *and* the agreeing keypoints spread
over most of both images: a 20% crop of A covers most of itself and most of A's middle, while two
neighbouring tiles of one photo share texture but no transform that carries one onto the other.

A repetitive texture can still give many keypoints agreeing on one transform over a part of both
images: the same blades of grass recur, and a texture photo may carry cloned patches (scikit-image's
grass does). So the fit is also checked on pixels (`agreement`): a small grey thumbnail of one image,
aligned onto the other by the fit, agrees with it over nearly all of at least one of the two (the
whole of a crop, all but the bar of a captioned copy), while two patches of texture agree only about
where their keypoints matched.

Keypoints are extracted once per image, at a bounded size, and stored with the image's other
per-image columns. A mirrored copy is matched without a second extraction: mirroring an image
mirrors each SIFT descriptor's 4x4 grid of cells and reverses its orientation bins, a fixed
permutation of the 128 values (`MIRROR`), and the x coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from imagesieve.images.decode import load, open_image

DEFAULT_MAX_SIDE = 256  # images are decoded no larger than this (a side): the cost per image is bounded
DEFAULT_FEATURES = 200  # keypoints kept per image, strongest first (400: same held-out recall, 1.6x the cost)
RATIO = 0.8  # Lowe's ratio test: a match counts when clearly nearer than the second nearest
CONTRAST = 0.02  # SIFT's contrast threshold, below OpenCV's 0.04: low-contrast photos still get keypoints
RANSAC_PIXELS = 0.015  # reprojection tolerance, a share of the larger side
THUMB = 48  # side of the grey thumbnail kept per image for the pixel check (2.3 KB)
AGREE_WINDOW = 7  # thumbnail pixels: the neighbourhood whose correlation says whether two images agree there
AGREE_CORRELATION = 0.5
FLAT_STD = 3.0  # grey levels: two flat neighbourhoods agree (their correlation is only noise)


def _mirror_permutation() -> np.ndarray:
    """The descriptor of a mirrored patch: OpenCV lays SIFT out as [4 rows][4 cols][8 orientations];
    a horizontal mirror reverses the rows of its rotated frame and negates the orientations."""
    index = np.arange(128).reshape(4, 4, 8)[::-1]
    return index[:, :, (-np.arange(8)) % 8].reshape(-1)


MIRROR = _mirror_permutation()


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        raise ImportError("find --method copy needs OpenCV: pip install 'imagesieve[copy]'") from exc
    cv2.setNumThreads(1)  # the executor already runs one worker per core
    return cv2


@dataclass
class Keypoints:
    """One image's keypoints: (n, 2) float32 positions and (n, 128) uint8 SIFT descriptors, in an image
    of `width` x `height` pixels (the decoded, bounded size), and a THUMB x THUMB uint8 grey thumbnail of
    that image (stretched to a square) for the pixel check."""

    points: np.ndarray
    descriptors: np.ndarray
    width: int
    height: int
    thumb: np.ndarray

    def mirrored(self) -> Keypoints:
        points = self.points.copy()
        points[:, 0] = self.width - 1 - points[:, 0]
        return Keypoints(points, np.ascontiguousarray(self.descriptors[:, MIRROR]), self.width, self.height,
                         np.ascontiguousarray(self.thumb[:, ::-1]))

    def to_columns(self) -> dict[str, object]:
        return {"kp_width": self.width, "kp_height": self.height,
                "kp_points": self.points.astype(np.float32).tobytes(),
                "kp_descriptors": self.descriptors.astype(np.uint8).tobytes(),
                "kp_thumb": self.thumb.astype(np.uint8).tobytes()}

    @classmethod
    def from_columns(cls, row: dict) -> Keypoints:
        points = np.frombuffer(row["kp_points"], np.float32).reshape(-1, 2)
        descriptors = np.frombuffer(row["kp_descriptors"], np.uint8).reshape(-1, 128)
        thumb = np.frombuffer(row["kp_thumb"], np.uint8).reshape(THUMB, THUMB)
        return cls(points, descriptors, int(row["kp_width"]), int(row["kp_height"]), thumb)


class KeypointExtractor:
    """Decodes an image no larger than `max_side` (JPEGs by DCT scaling) and finds its SIFT keypoints.
    Grey levels are equalised first, which makes detection indifferent to brightness and contrast."""

    def __init__(self, max_side: int = DEFAULT_MAX_SIDE, features: int = DEFAULT_FEATURES) -> None:
        self.cv2 = _cv2()
        self.max_side = max_side
        self.sift = self.cv2.SIFT_create(nfeatures=features, contrastThreshold=CONTRAST)

    def __call__(self, data: bytes, where: str) -> Keypoints:
        image = open_image(data, where)
        if image.format == "JPEG":
            image.draft("L", (self.max_side, self.max_side))
        image = load(image, where).convert("L")
        image.thumbnail((self.max_side, self.max_side))
        pixels = np.asarray(image)
        grey = self.cv2.equalizeHist(pixels)
        found, descriptors = self.sift.detectAndCompute(grey, None)
        points = np.array([k.pt for k in found], np.float32).reshape(-1, 2)
        descriptors = np.zeros((0, 128), np.uint8) if descriptors is None else descriptors
        thumb = self.cv2.resize(pixels, (THUMB, THUMB), interpolation=self.cv2.INTER_AREA)
        return Keypoints(points, np.clip(descriptors, 0, 255).astype(np.uint8), grey.shape[1], grey.shape[0], thumb)


@dataclass(frozen=True)
class Match:
    """What verification found for a pair: inliers of the best fit, the share of each image's area
    inside the convex hull of those inliers, and the pixels' `agreement` under the fit."""

    inliers: int = 0
    coverage_a: float = 0.0
    coverage_b: float = 0.0
    mirrored: bool = False
    agreement: float = 0.0

    @property
    def coverage(self) -> float:
        """The smaller of the two shares: both images must be mostly explained by the match."""
        return min(self.coverage_a, self.coverage_b)


def verify(a: Keypoints, b: Keypoints, ratio: float = RATIO) -> Match:
    """The better of matching `a` against `b` and against `b` mirrored."""
    return verify_many(a, [b], ratio)[0]


def verify_many(a: Keypoints, others: list[Keypoints], ratio: float = RATIO) -> list[Match]:
    """`verify(a, b)` for each b of `others`, with one matrix product: the descriptors of `a` and of its
    mirror against those of all of `others` laid end to end. Matching `a` mirrored against `b` is
    matching `a` against `b` mirrored (same distances, the fit mirrored, the covered areas equal)."""
    out = [Match()] * len(others)
    usable = [k for k, b in enumerate(others) if len(b.descriptors) >= 2]
    if len(a.descriptors) < 2 or not usable:
        return out
    from imagesieve.matching.copy_kernel import ratio_matches  # here: it loads numba, which `find` needs only here

    query = np.concatenate([a.descriptors, a.descriptors[:, MIRROR]]).astype(np.float32)
    train = np.concatenate([others[k].descriptors for k in usable]).astype(np.float32)
    starts = np.cumsum([0, *(len(others[k].descriptors) for k in usable)])
    nearest = ratio_matches(query @ train.T, np.einsum("ij,ij->i", query, query),
                            np.einsum("ij,ij->i", train, train), starts, ratio)
    n, mirror = len(a.descriptors), a.mirrored()
    for column, k in enumerate(usable):
        direct, fit = _fit(a, others[k], nearest[:n, column], False)
        flipped, flipped_fit = _fit(mirror, others[k], nearest[n:, column], True)
        side, match, fit = (mirror, flipped, flipped_fit) if flipped.inliers > direct.inliers else (a, direct, fit)
        if fit is not None and match.inliers >= 3:  # fewer never make a copy (min_inliers is 3 or more)
            match = replace(match, agreement=agreement(side, others[k], fit))
        out[k] = match
    return out


def _fit(a: Keypoints, b: Keypoints, nearest: np.ndarray, mirrored: bool) -> tuple[Match, np.ndarray | None]:
    """The RANSAC similarity fit of `a`'s keypoints (`a` perhaps mirrored) onto their matches in `b`,
    and the fit (2 x 3, a's pixels to b's) if there is one."""
    good = np.flatnonzero(nearest >= 0)
    if len(good) < 3:
        return Match(mirrored=mirrored), None
    cv2 = _cv2()
    src, dst = a.points[good], b.points[nearest[good]]
    tolerance = RANSAC_PIXELS * max(b.width, b.height)
    fit, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=tolerance)
    if fit is None:
        return Match(mirrored=mirrored), None
    keep = inliers.ravel().astype(bool)
    return Match(int(keep.sum()), _hull_share(cv2, src[keep], a), _hull_share(cv2, dst[keep], b), mirrored), fit


def agreement(a: Keypoints, b: Keypoints, fit: np.ndarray) -> float:
    """The larger of the shares of `a` and of `b` whose pixels agree with the other image aligned by
    `fit` (a's pixels to b's). A copy explains nearly all of at least one image; two tiles of one
    texture agree only around the keypoints they share (grass tiles 0.37-0.66, copies 0.72 and up:
    BENCHMARKS.md). Measured both ways: the black corners a rotation adds lie inside the rotated
    image's frame, where they disagree with the other image, but outside the other image's frame."""
    from imagesieve.matching.copy_kernel import pixel_agreement

    a_to_b = _thumb_frame(b) @ np.vstack([fit, [0, 0, 1]]) @ np.linalg.inv(_thumb_frame(a))
    return pixel_agreement(a.thumb, b.thumb, a_to_b[:2], AGREE_WINDOW, AGREE_CORRELATION, FLAT_STD ** 2)


def _thumb_frame(image: Keypoints) -> np.ndarray:
    """The 3 x 3 map from the image's pixels to its thumbnail's (pixel centres onto pixel centres)."""
    sx, sy = THUMB / image.width, THUMB / image.height
    return np.array([[sx, 0, sx / 2 - 0.5], [0, sy, sy / 2 - 0.5], [0, 0, 1]])


def _hull_share(cv2, points: np.ndarray, image: Keypoints) -> float:
    if len(points) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(points)) / (image.width * image.height))

"""imagehash's pHash, dHash and aHash computed on many small grey arrays at once, bit for bit.

Each function takes the arrays imagehash builds before its last step (the image resized to 32x32,
9x8 or 8x8 by Pillow) stacked as `(n, rows, cols)` uint8, and returns n 64-bit codes packed as
`pack_bits` packs them (bit i of the 8x8 hash, row-major, is bit 63-i).

pHash is where exactness needs care: imagehash takes scipy's FFT-based DCT, here it is one matrix
product over the whole batch, and the two round differently (by ~1e-9 at most, the coefficients
reaching ~1e6). A bit can only differ when a coefficient lies that close to the median, i.e. on a
tie (flat or synthetic images); such images are recomputed with imagehash's own steps, so every
code is imagehash's.
"""

from __future__ import annotations

import numpy as np

HASH_SIZE = 8
PHASH_SIDE = HASH_SIZE * 4  # imagehash's highfreq_factor
# a coefficient this near the median may round to either side of it: recompute that image exactly
TIE_TOLERANCE = 1e-6


def _dct_rows() -> np.ndarray:
    """The first 8 rows of scipy.fftpack's unnormalised DCT-II of length 32: 2 cos(pi k (2j+1) / 64)."""
    k = np.arange(HASH_SIZE)[:, None]
    j = np.arange(PHASH_SIDE)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * j + 1) / (2 * PHASH_SIDE))


_DCT = _dct_rows()


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """(n, 8, 8) booleans -> n uint64 codes, first bit most significant."""
    packed = np.packbits(bits.reshape(len(bits), HASH_SIZE * HASH_SIZE), axis=1)
    return packed.view(">u8").ravel().astype(np.uint64)


def phash_codes(pixels: np.ndarray) -> np.ndarray:
    """(n, 32, 32) uint8 -> pHash codes; the low 8x8 DCT coefficients above their median."""
    low = _DCT @ pixels.astype(np.float64) @ _DCT.T  # (n, 8, 8): the DCT of both axes, low frequencies
    flat = low.reshape(len(low), HASH_SIZE * HASH_SIZE)
    middle = np.partition(flat, (31, 32), axis=1)
    median = (middle[:, 31] + middle[:, 32]) / 2  # numpy.median of an even count
    codes = pack_rows(flat > median[:, None])
    for row in np.flatnonzero((np.abs(flat - median[:, None]) <= TIE_TOLERANCE).any(axis=1)):
        codes[row] = phash_reference(pixels[row])
    return codes


def phash_reference(pixels: np.ndarray) -> np.uint64:
    """imagehash.phash's own steps on one 32x32 array (scipy's DCT, numpy's median). A flat array, the
    common tie (a blank image), needs no scipy, whose import costs a worker ~0.2 s: its DCT is exact
    (butterflies of equal values give exact zeros), every coefficient but the first is 0 and so is
    the median, and only the first bit is set, unless the pixels are black."""
    if (pixels == pixels.flat[0]).all():
        return np.uint64(1 << 63) if pixels.flat[0] > 0 else np.uint64(0)
    import scipy.fftpack

    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:HASH_SIZE, :HASH_SIZE]
    return pack_rows((low > np.median(low))[None])[0]


def dhash_codes(pixels: np.ndarray) -> np.ndarray:
    """(n, 8, 9) uint8 -> dHash codes: each pixel brighter than its left neighbour."""
    return pack_rows(pixels[:, :, 1:] > pixels[:, :, :-1])


def dhash_vertical_codes(pixels: np.ndarray) -> np.ndarray:
    """(n, 9, 8) uint8 -> vertical dHash codes: each pixel brighter than the one above it."""
    return pack_rows(pixels[:, 1:, :] > pixels[:, :-1, :])


def ahash_codes(pixels: np.ndarray) -> np.ndarray:
    """(n, 8, 8) uint8 -> aHash codes: each pixel above the image's mean (sums of integers: exact)."""
    return pack_rows(pixels > pixels.mean(axis=(1, 2), dtype=np.float64)[:, None, None])

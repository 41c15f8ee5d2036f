"""Precision at scale: how many unrelated images pHash pairs up as n grows, and what confirming each
pair by the two dHashes of the same decode (`find --confirm`) keeps and drops.

Chance pairs grow as n^2 while real copies grow as n, so a threshold that is precise on a thousand
images is not on a million. Two sets, neither used to choose the other's figures:

  mosaics   (chooses the rule) 2x2 mosaics of 128-px tiles of real photos at random offsets and
            flips, 16% planted copies (recompressed, resized, PNG), as `bench_dedup.py --density
            sparse` makes them, hashed in memory. Every pair within 10 bits of pHash is labelled
            (same family or not); false pairs are scaled to 1M images by (1M / n)^2, the share of
            removals at 1M estimated from them (one false removal per false pair, at most).
  labelled  (checks it, never tuned on) the real-photo tiles of `evaluate.build_labelled_set` at 128
            and 256 px, each with its copies: recall of each easy copy kind against its original,
            and precision over all pairs of the set, with and without the rule.

Usage: python benchmarks/bench_precision.py [--mosaics 100000] [--confirm 22,24,26,28,off] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from imagesieve.matching.hashes import hash_images
from imagesieve.matching.near_search import near_pairs, popcount64
from imagesieve.workflows.find import CONFIRMED_BY, DEFAULT_CONFIRM, DEFAULT_THRESHOLDS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_dedup  # noqa: E402  (the mosaics of the dedup benchmark)

KINDS = ("phash", *CONFIRMED_BY["phash"])
EASY = ("exact_copy", "resize_0.5", "resize_1.5", "jpeg_q25", "jpeg_q30", "jpeg_q60", "to_png", "to_webp",
        "brightness_1.12", "brightness_1.2", "crop_3pct")
SHARD = 1000


def _codes(datas: list[bytes]) -> np.ndarray:
    hashed = hash_images(datas, KINDS, [str(i) for i in range(len(datas))])
    return np.array([[h.values[k] for k in KINDS] for h in hashed], np.uint64)


def _mosaic_chunk(number: int) -> tuple[np.ndarray, np.ndarray]:
    """One shard's worth of mosaics (the same images as bench_dedup's shard `number`): codes, family."""
    rng = np.random.default_rng(7 * 100_003 + number)
    photos = bench_dedup._photos()
    datas, family, originals = [], [], []
    for i in range(SHARD):
        if originals and rng.random() < bench_dedup.PLANTED:
            of, image = originals[int(rng.integers(len(originals)))]
            datas.append(bench_dedup._copy(rng, image))
            family.append(of)
        else:
            image = bench_dedup._original(rng, photos, "sparse")
            originals.append((number * SHARD + i, image))
            datas.append(bench_dedup._jpeg(image))
            family.append(number * SHARD + i)
    return _codes(datas), np.array(family)


def accepted(dp: np.ndarray, second: np.ndarray, within: int | None) -> np.ndarray:
    return np.ones(len(dp), bool) if within is None else dp + second <= within


def mosaics(n: int, workers: int, rules: list[int | None]) -> None:
    started = time.monotonic()
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_mosaic_chunk, range(n // SHARD)))
    codes, family = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    planted = int((family != np.arange(len(family))).sum())
    i, j, dp = near_pairs(codes[:, 0], DEFAULT_THRESHOLDS["phash"])
    second = popcount64(codes[i, 1:] ^ codes[j, 1:]).sum(axis=1)
    true = family[i] == family[j]
    scale = (1_000_000 / len(codes)) ** 2
    print(f"\nmosaics: {len(codes):,} images ({planted:,} planted copies), {len(i):,} pairs within pHash 10 "
          f"({int(true.sum()):,} of a copy and its original), made and hashed in {time.monotonic() - started:.0f} s")
    print(f"  {'confirm':>8} {'copy pairs kept':>16} {'false pairs':>12} {'false at 1M':>12} "
          f"{'share of removals that are copies, at 1M (est.)':>48}")
    for within in rules:
        ok = accepted(dp, second, within)
        false_1m = (ok & ~true).sum() * scale
        copies_1m = planted * 1_000_000 / len(codes) * (ok & true).sum() / max(true.sum(), 1)
        print(f"  {'off' if within is None else within:>8} {(ok & true).sum() / max(true.sum(), 1):>16.4f} "
              f"{int((ok & ~true).sum()):>12,} {false_1m:>12,.0f} {copies_1m / (copies_1m + false_1m):>48.3f}")


def labelled(tile: int, rules: list[int | None]) -> None:
    from evaluate import build_labelled_set

    from imagesieve.workflows.sample_data import COPY_HARD, HASH_TRANSFORMS

    ls = build_labelled_set(tuple(dict.fromkeys(HASH_TRANSFORMS + COPY_HARD)), tile)
    codes = _codes(ls.images)
    names = np.array(ls.transform)
    dp = popcount64(codes[:, None, 0] ^ codes[None, :, 0])
    second = popcount64(codes[:, None, 1:] ^ codes[None, :, 1:]).sum(axis=2)
    same = ls.source[:, None] == ls.source[None, :]
    easy = np.isin(names, ("original", *EASY))
    upper = np.triu(np.ones_like(same), 1) & easy[:, None] & easy[None, :]
    originals = np.flatnonzero(names == "original")
    original_of = np.full(int(ls.source.max()) + 1, -1)
    original_of[ls.source[originals]] = originals
    print(f"\nlabelled photos, {tile}-px tiles: {len(originals)} tiles, {int(easy.sum())} images with their easy "
          "copies; recall of each copy against its original, precision over every pair of easy images")
    print(f"  {'confirm':>8} {'precision':>9} {'easy recall':>11} {'worst kinds':<60}")
    for within in rules:
        predicted = (dp <= DEFAULT_THRESHOLDS["phash"]) & (True if within is None else dp + second <= within)
        tp, fp = int((predicted & same & upper).sum()), int((predicted & ~same & upper).sum())
        recalls = {}
        for name in sorted(set(EASY) & set(names)):
            rows = np.flatnonzero(names == name)
            recalls[name] = float(predicted[rows, original_of[ls.source[rows]]].mean())
        rows = np.flatnonzero(np.isin(names, EASY))
        recall = float(predicted[rows, original_of[ls.source[rows]]].mean())
        worst = ", ".join(f"{k} {v:.3f}" for k, v in sorted(recalls.items(), key=lambda kv: kv[1])[:3])
        print(f"  {'off' if within is None else within:>8} {tp / max(tp + fp, 1):>9.4f} {recall:>11.4f} {worst:<60}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mosaics", type=int, default=100_000)
    parser.add_argument("--confirm", default=f"20,22,24,{DEFAULT_CONFIRM},28,30,off")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rules = [None if r == "off" else int(r) for r in args.confirm.split(",")]
    print(f"pHash threshold {DEFAULT_THRESHOLDS['phash']}; confirm = the most bits pHash, dHash and vertical dHash may "
          f"differ in together (default {DEFAULT_CONFIRM})")
    mosaics(args.mosaics, args.workers, rules)
    for tile in (128, 256):
        labelled(tile, rules)


if __name__ == "__main__":
    main()

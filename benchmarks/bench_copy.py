"""`find --method copy` beside exact, pHash, pHash --flip and semantic, on labelled real photos.

The set: distinct real-photo tiles (`sample_data.distinct_images`; neighbouring tiles of one photo
are the hard negatives) and, for each tile, four of the ten copy transforms (COPY_EASY + COPY_HARD,
taken in turn so each transform has as many examples). All are written to tar shards and found by
the real workflows. Every pair of images is scored: a pair is predicted a duplicate when the method
would match it (pHash: distance within the threshold; semantic: cosine within eps; copy: a verified
candidate pair). Thresholds are chosen by best F1 on the tiles of one half and scored on the other
half (held out). Cost: `find --method copy` end to end against `find --method phash`, same data,
same workers.

Usage: python benchmarks/bench_copy.py [--tile 160] [--workers 2] [--limit N] [--per-tile 4|6]
       [--neighbours K] [--features F]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import tempfile
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from evaluate import FRESH_PHOTOS, SPLIT_SEED, LabelledSet, photo_of, photos_in, score, split, subset

from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.near_search import popcount64
from imagesieve.workflows.copy_find import CopyConfig, find_copies, is_copy
from imagesieve.workflows.find import FindConfig, find_duplicates
from imagesieve.workflows.sample_data import COPY_EASY, COPY_HARD, TRANSFORMS, distinct_images, encode, write_shard

PER_TILE = 4  # 4 or 6 keep every transform equally often in each half (the windows of names rotate)
TARGETS = {"images/s per core": 20.0, "hard recall": 0.90, "easy recall": 0.99, "precision": 0.95}


def build(tile: int, limit: int | None, per_tile: int = PER_TILE, photos: list | None = None
          ) -> tuple[LabelledSet, list[str], list[str]]:
    """The labelled set, its sample keys, and the names of its photos (by `photo_of`'s index)."""
    tiles = distinct_images(tile, photos)[:limit]
    names = (*COPY_EASY, *COPY_HARD)
    images, source, transform, keys = [], [], [], []
    for index, (_, image) in enumerate(tiles):
        original = encode(image)
        chosen = [names[(index * per_tile + q) % len(names)] for q in range(per_tile)]
        for name, data in [("original", original), *((n, TRANSFORMS[n].apply(image, original)[0]) for n in chosen)]:
            images.append(data)
            source.append(index)
            transform.append(name)
            keys.append(f"{len(keys):07d}")
    photo = photo_of([name for name, _ in tiles])
    names = sorted({name.rsplit("_r", 1)[0] for name, _ in tiles})
    return LabelledSet(images, np.array(source), transform, photo[np.array(source)]), keys, names


def write_shards(root: str, labelled: LabelledSet, keys: list[str], size: int = 200) -> str:
    order = np.random.default_rng(0).permutation(len(keys))  # copies spread over shards
    folder = os.path.join(root, "shards")
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        ext = {"png": "png"}
        samples = [{ext.get(_format(labelled.images[r]), "jpg"): labelled.images[r]} for r in rows]
        write_shard(os.path.join(folder, f"{start // size:05d}.tar"), samples, [keys[r] for r in rows])
    return folder


def _format(data: bytes) -> str:
    return "png" if data[:4] == b"\x89PNG" else "jpg"


def rows_of(table: pa.Table, keys: list[str]) -> np.ndarray:
    position = {k: i for i, k in enumerate(table.column("id").to_pylist())}
    return np.array([position[k] for k in keys])


def tuned(labelled: LabelledSet, dists: dict, name: str) -> tuple[object, object]:
    """The setting with the best F1 on the tuning half, and its score on the held-out half."""
    tune, test = split(labelled, 0), split(labelled, 1)
    best = max(dists, key=lambda s: (score(subset(labelled, tune), dists[s][np.ix_(tune, tune)], name, 0).f1))
    return best, score(subset(labelled, test), dists[best][np.ix_(test, test)], name, 0)


def predicted(label: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """A 0/1 distance matrix: 0 where a pair is predicted a duplicate. The copy finder verifies one
    image per group of exact copies (`label`: same bytes, same label), so a verified pair stands for
    every pair of their groups, and exact copies match each other."""
    groups = np.zeros((label.max() + 1,) * 2, bool)
    groups[label[i], label[j]] = groups[label[j], label[i]] = True
    np.fill_diagonal(groups, True)
    return (~groups[label][:, label]).astype(np.int8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile", type=int, default=160)
    parser.add_argument("--limit", type=int, default=None, help="use only this many tiles (quick runs)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--per-tile", type=int, default=PER_TILE, choices=(4, 6),
                        help="transforms per tile (6: about 55 held-out examples of each)")
    parser.add_argument("--neighbours", type=int, default=CopyConfig().neighbours)
    parser.add_argument("--features", type=int, default=CopyConfig().features)
    parser.add_argument("--photos", default=None, metavar="DIR",
                        help="tiles of these photos instead of the bundled ones (a folder holding "
                             "evaluate.FRESH_PHOTOS): the defaults are then scored on every image, none of "
                             "which any choice saw")
    args = parser.parse_args()
    settings = CopyConfig(neighbours=args.neighbours, features=args.features)
    photos = photos_in(args.photos, FRESH_PHOTOS) if args.photos else None
    labelled, keys, photo_names = build(args.tile, args.limit, args.per_tile, photos)
    n = len(keys)
    with tempfile.TemporaryDirectory(prefix="bench-copy-") as root:
        shards = write_shards(root, labelled, keys)
        executor = LocalExecutor(args.workers)
        started = time.monotonic()
        find_duplicates(shards, os.path.join(root, "phash"), FindConfig(method="phash"), executor=executor)
        phash_s = time.monotonic() - started
        started, cpu = time.monotonic(), cpu_seconds()
        summary = find_copies(shards, os.path.join(root, "copy"), settings, executor=executor)
        copy_s, copy_cpu = time.monotonic() - started, cpu_seconds() - cpu
        hashes = pa.concat_tables([pq.read_table(os.path.join(root, "copy", "hashes", f))
                                   for f in sorted(os.listdir(os.path.join(root, "copy", "hashes")))])
        hashes = hashes.take(pa.array(rows_of(hashes, keys)))
        embeddings = _semantic_embeddings(labelled)
        pairs = pq.read_table(os.path.join(root, "copy", "copy_pairs.parquet"))

    rows = []
    same_bytes = hashes.column("bytes_hash").to_numpy(zero_copy_only=False)
    label = np.unique(same_bytes, return_inverse=True)[1]
    rows.append(("exact", "-", score(subset(labelled, split(labelled, 1)),
                                     (same_bytes[:, None] != same_bytes[None, :])[np.ix_(*[split(labelled, 1)] * 2)],
                                     "exact", 0)))
    codes = hashes.column("phash").to_numpy().astype(np.uint64)
    flips = hashes.column("phash_flip").to_numpy().astype(np.uint64)
    plain = popcount64(codes[:, None] ^ codes[None, :])
    mirrored = np.minimum(np.minimum(plain, popcount64(codes[:, None] ^ flips[None, :])),
                          popcount64(flips[:, None] ^ codes[None, :]))
    for name, dist in (("phash", plain), ("phash --flip", mirrored)):
        best, s = tuned(labelled, {t: (dist > t).astype(np.int8) for t in range(0, 21, 2)}, name)
        rows.append((name, f"t={best}", s))
    similarity = embeddings @ embeddings.T
    best, s = tuned(labelled, {e: (similarity < 1 - e).astype(np.int8) for e in (0.02, 0.04, 0.06, 0.08, 0.1, 0.15)},
                    "semantic")
    rows.append(("semantic", f"eps={best}", s))
    position = {k: r for r, k in enumerate(keys)}
    i = np.array([position[k] for k in pairs.column("id_a").to_pylist()])
    j = np.array([position[k] for k in pairs.column("id_b").to_pylist()])
    inliers = pairs.column("inliers").to_numpy()
    coverage = np.minimum(pairs.column("coverage_a").to_numpy(), pairs.column("coverage_b").to_numpy())
    agreement = pairs.column("agreement").to_numpy()
    hash_distance = pairs.column("hash_distance").to_numpy()
    for method, accept in (("copy", settings.hash_accept), ("copy, keypoints only", -1)):
        grid = {}
        for m, c in itertools.product((6, 8, 10, 12, 15, 20), (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)):
            config = replace(settings, min_inliers=m, min_coverage=c, hash_accept=accept)
            keep = is_copy(inliers, coverage, agreement, hash_distance, config)
            grid[(m, c)] = predicted(label, i[keep], j[keep])
        best, s = tuned(labelled, grid, method)
        rows.append((method, f"{best[0]} inliers, cov {best[1]}", s))
    test = np.arange(n) if photos else split(labelled, 1)  # fresh photos: every image is held out
    false_pairs = {}
    for name, default in (("copy (defaults), no pixel check", replace(settings, min_agreement=0.0)),
                          ("copy (defaults)", settings)):
        keep = is_copy(inliers, coverage, agreement, hash_distance, default)
        s = score(subset(labelled, test), predicted(label, i[keep], j[keep])[np.ix_(test, test)], "copy", 0)
        rows.append((name, f"{default.min_inliers} inliers, cov {default.min_coverage}, agree "
                           f"{default.min_agreement}", s))
        # every pair of distinct tiles, both halves: a tile and its neighbour in the other half are
        # never scored above, so a texture that matches across the halves shows only here
        false_pairs[name] = int((keep & (labelled.source[i] != labelled.source[j])).sum())
        wrong = keep & (labelled.source[i] != labelled.source[j])
        by_photo = Counter(" / ".join(sorted({photo_names[labelled.photo[a]], photo_names[labelled.photo[b]]}))
                           for a, b in zip(i[wrong], j[wrong], strict=True))
        false_pairs[name + ", by photo"] = dict(by_photo.most_common(8))

    transforms = (*COPY_EASY, *COPY_HARD)
    test_photos = len(np.unique(labelled.photo[split(labelled, 1)]))
    print(f"\nquality on {n} images ({len(set(labelled.source))} real-photo tiles of {args.tile} px, "
          f"{args.per_tile} of the transforms each); thresholds chosen on one half, scored on the other "
          f"(split by source photo, seed {SPLIT_SEED}: {len(split(labelled, 1))} images of {test_photos} photos "
          "held out)")
    print(f"| method | setting | precision | {' | '.join(transforms)} |")
    print("|---|---|---:|" + "---:|" * len(transforms))
    for name, setting, s in rows:
        recall = " | ".join(f"{s.recall_by_transform.get(t, float('nan')):.2f}" for t in transforms)
        print(f"| {name} | {setting} | {s.precision:.3f} | {recall} |")

    print("\nverified pairs of distinct tiles accepted (all pairs, both halves; by hash or keypoints):")
    for name, count in false_pairs.items():
        print(f"  {name:<32} {count}")

    seconds = summary.seconds
    per_core = n / copy_s / args.workers
    per_cpu = n / copy_cpu
    print(f"\ncost, {n} images, {args.workers} workers, neighbours {settings.neighbours}, "
          f"features {settings.features}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"| | value |\n|---|---:|\n| find --method phash | {phash_s:.1f} s |\n| find --method copy | {copy_s:.1f} s "
          f"({copy_s / phash_s:.1f}x) |")
    for phase_name, value in seconds.items():
        print(f"| copy: {phase_name} | {value:.1f} s |")
    print(f"| candidates per image | {summary.candidates / n:.1f} |")
    print(f"| verification | {summary.candidates / max(seconds['verify'], 1e-9) / args.workers:.0f} pairs/s per core |")
    print(f"| end to end, wall | {per_core:.1f} images/s per core |")
    print(f"| end to end, CPU time of all processes | {copy_cpu:.1f} s: {per_cpu:.1f} images per CPU-second |")

    held = next(s for name, _, s in rows if name == "copy (defaults)")
    checks = [("images/s per core", per_core, per_core >= TARGETS["images/s per core"]),
              ("images/CPU-second", per_cpu, per_cpu >= TARGETS["images/s per core"]),
              ("hard recall (min)", min(held.recall_by_transform[t] for t in COPY_HARD),
               min(held.recall_by_transform[t] for t in COPY_HARD) >= TARGETS["hard recall"]),
              ("easy recall (min)", min(held.recall_by_transform[t] for t in COPY_EASY),
               min(held.recall_by_transform[t] for t in COPY_EASY) >= TARGETS["easy recall"]),
              ("precision", held.precision, held.precision >= TARGETS["precision"])]
    print(f"\ntargets (copy at its defaults, {'every image: fresh photos' if photos else 'held-out half'})")
    for name, value, ok in checks:
        print(f"  {name:<20} {value:8.3f}   {'met' if ok else 'NOT met'}")


def cpu_seconds() -> float:
    """User and system time of this process and of its finished children (the executor's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _semantic_embeddings(labelled: LabelledSet) -> np.ndarray:
    """The semantic finder's default embeddings (whole image, at its input size), embeddings alone."""
    import io

    from PIL import Image

    from imagesieve.stages.embedding.onnx_model import OnnxEmbedder
    from imagesieve.workflows.semantic_find import INPUT_SIZE

    model = OnnxEmbedder(input_size=INPUT_SIZE)
    images = [Image.open(io.BytesIO(b)) for b in labelled.images]
    return np.concatenate([model(images[s:s + 64]) for s in range(0, len(images), 64)])


if __name__ == "__main__":
    main()

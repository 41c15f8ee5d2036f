"""Benchmark `imagesieve find` against imagededup (and imagehash) on the same images and cores, in one run.

  (a) hash encode throughput: imagesieve's hash phase vs imagededup PHash().encode_images
  (b) search on 1M random 64-bit hashes with planted near pairs vs imagededup find_duplicates
      (BK-tree, and its default brute-force search) measured on subsamples, extrapolated as n^2
  (c) search cost growth 10k -> 100k -> 1M
  (d) precision / recall / F1 on the labelled real-photo set, each tool at its default thresholds

imagededup depends on torch, so it lives in its own virtual environment, made on demand:
  python3 -m venv /tmp/venv-imagededup && /tmp/venv-imagededup/bin/pip install torch==2.14.1 \
      torchvision==0.29.1 imagededup
and passed with --imagededup-python /tmp/venv-imagededup/bin/python. Without it, (a), (b) and (d)
compare against imagehash (installed here) only.

(a) times the whole `imagesieve find --method phash` command (start-up, hashing, search and output) against
imagededup's encode call alone, on two sets: uniform 384-px JPEG crops, and real-photo crops of mixed sizes
(128-768 px, mostly JPEG, some PNG and WebP), the kind of images a crawl holds.

Usage: python benchmarks/bench_find.py [--images 2000] [--search-n 1000000] [--repeat 3] [--sets uniform,mixed]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np
from evaluate import build_labelled_set, hash_set, held_out, pair_distances, score, split, subset
from PIL import Image

from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.near_search import near_pairs
from imagesieve.workflows.find import DEFAULT_THRESHOLDS, FindConfig, hash_shards
from imagesieve.workflows.sample_data import load_photos, photo_crops, write_shard

IMAGEDEDUP_ENCODE = r"""
import json, resource, sys, time
from imagededup.methods import PHash
folder, repeat, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def cpu():
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
times, cpus = [], []
for _ in range(repeat):
    start, cpu_start = time.perf_counter(), cpu()
    encodings = PHash(verbose=False).encode_images(image_dir=folder, num_enc_workers=workers)
    times.append(time.perf_counter() - start)
    cpus.append(cpu() - cpu_start)
print(json.dumps({"times": times, "cpu": cpus, "n": len(encodings)}))
"""

IMAGEDEDUP_SEARCH = r"""
import json, sys, time
import numpy as np
from imagededup.methods import PHash
codes = np.load(sys.argv[1]); method = sys.argv[2]; threshold = int(sys.argv[3]); workers = int(sys.argv[4])
encoding_map = {str(i): format(int(c), "016x") for i, c in enumerate(codes)}
start = time.perf_counter()
found = PHash(verbose=False).find_duplicates(encoding_map=encoding_map, max_distance_threshold=threshold,
                                             search_method=method, num_dist_workers=workers)
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "pairs": sum(len(v) for v in found.values()) // 2}))
"""

IMAGEDEDUP_HASH_FILES = r"""
import json, sys
from imagededup.methods import AHash, DHash, PHash, WHash
folder, n = sys.argv[1], int(sys.argv[2])
out = {}
for name, klass in (("phash", PHash), ("dhash", DHash), ("ahash", AHash), ("whash", WHash)):
    hasher = klass(verbose=False)
    out[name] = [hasher.encode_image(image_file=f"{folder}/{i:06d}.img") for i in range(n)]
print(json.dumps(out))
"""


def run_json(python: str, script: str, *args: object) -> dict:
    result = subprocess.run([python, "-c", script, *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def uniform_crops(n: int, side: int = 384) -> Iterator[tuple[bytes, str]]:
    """n random side x side crops of the bundled photos (scaled up 2x) as JPEG q90."""
    rng = np.random.default_rng(0)
    photos = [np.asarray(Image.fromarray(p).resize((p.shape[1] * 2, p.shape[0] * 2))) for _, p in load_photos()]
    for i in range(n):
        photo = photos[i % len(photos)]
        y, x = int(rng.integers(photo.shape[0] - side)), int(rng.integers(photo.shape[1] - side))
        buffer = io.BytesIO()
        Image.fromarray(photo[y:y + side, x:x + side]).save(buffer, format="JPEG", quality=90)
        yield buffer.getvalue(), "jpg"


IMAGE_SETS = {  # name -> (description, generator of (bytes, ext))
    "uniform": ("JPEGs of 384x384 (crops of the bundled photos, q90)", uniform_crops),
    "mixed": ("real-photo crops of 128-768 px a side (97% JPEG q75-95, 1.5% PNG, 1.5% WebP)", photo_crops),
}


def make_images(root: str, n: int, images: Iterator[tuple[bytes, str]]) -> tuple[str, str]:
    """The same image bytes as files (for imagededup) and in shards of 500 samples (for imagesieve)."""
    folder, shard_dir = os.path.join(root, "files"), os.path.join(root, "shards")
    os.makedirs(folder)
    os.makedirs(shard_dir)
    samples, keys = [], []
    for i, (data, ext) in enumerate(images):
        with open(os.path.join(folder, f"{i:06d}.{ext}"), "wb") as f:
            f.write(data)
        samples.append({ext: data, "txt": b"caption"})
        keys.append(f"{i:09d}")
    for start in range(0, n, 500):
        write_shard(os.path.join(shard_dir, f"{start // 500:05d}.tar"), samples[start:start + 500],
                    keys[start:start + 500])
    return folder, shard_dir


def time_find_command(shard_dir: str, out: str, workers: int) -> tuple[float, float]:
    """(seconds, CPU seconds of all its processes) of the whole `imagesieve find --method phash` command:
    start-up, hashing, search and output."""
    shutil.rmtree(out, ignore_errors=True)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-m", "imagesieve.cli", "find", "--method", "phash", "--workers", str(workers),
                    shard_dir, out], check=True, capture_output=True)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def bench_encode(args, root: str) -> None:
    for name in args.sets.split(","):
        description, generate = IMAGE_SETS[name]
        set_root = os.path.join(root, f"encode-{name}")
        folder, shard_dir = make_images(set_root, args.images, generate(args.images))
        print(f"\n(a) hash encode, {args.images} {description}, {args.workers} workers each, "
              f"median of {args.repeat}, the tools' runs interleaved")
        command, command_cpu, phase, theirs, theirs_cpu = [], [], [], [], []
        for run in range(args.repeat):
            seconds, cpu = time_find_command(shard_dir, os.path.join(set_root, "out"), args.workers)
            command.append(seconds)
            command_cpu.append(cpu)
            out = os.path.join(set_root, f"hashes-{run}")
            start = time.perf_counter()
            hash_shards(shard_dir, out, out, FindConfig(method="phash"), LocalExecutor(args.workers), False, "hash")
            phase.append(time.perf_counter() - start)
            if args.imagededup_python:
                result = run_json(args.imagededup_python, IMAGEDEDUP_ENCODE, folder, 1, args.workers)
                theirs.append(result["times"][0])
                theirs_cpu.append(result["cpu"][0])
        ours_s = statistics.median(command)
        print(f"    imagesieve find --method phash, whole command     {args.images / ours_s:8.0f} images/s   "
              f"CPU {statistics.median(command_cpu):.2f} s")
        phase_s = statistics.median(phase)
        print(f"    imagesieve hash phase alone (pHash + bytes hash)  {args.images / phase_s:8.0f} images/s")
        per_image = imagehash_loop_seconds(folder)
        print(f"    imagehash.phash loop, full decode, 1 process      {1 / per_image:8.0f} images/s")
        if theirs:
            theirs_s = statistics.median(theirs)
            ratio = theirs_s / ours_s
            print(f"    imagededup PHash.encode_images                    {args.images / theirs_s:8.0f} images/s   "
                  f"CPU {statistics.median(theirs_cpu):.2f} s")
            print(f"    ratio, whole imagesieve command / imagededup encode: {ratio:.2f}x  "
                  f"(target >= 3x: {'met' if ratio >= 3 else 'NOT met'}; per run: "
                  f"{', '.join(f'{t / o:.2f}x' for o, t in zip(command, theirs, strict=True))}; "
                  f"CPU seconds: {statistics.median(theirs_cpu) / statistics.median(command_cpu):.2f}x)")


def imagehash_loop_seconds(folder: str, n: int = 300) -> float:
    """Seconds per image of the common hand-written loop: open, full decode, imagehash.phash."""
    import imagehash

    files = sorted(os.listdir(folder))[:n]
    start = time.perf_counter()
    for name in files:
        imagehash.phash(Image.open(os.path.join(folder, name)))
    return (time.perf_counter() - start) / len(files)


def near_flips(k: int, threshold: int, rng: np.random.Generator) -> np.ndarray:
    """k masks of 1..threshold random bits: what turns a code into a planted near copy."""
    flips = np.zeros(k, dtype=np.uint64)
    for bit_count in range(1, threshold + 1):
        rows = np.flatnonzero(rng.integers(1, threshold + 1, size=k) == bit_count)
        for row in rows:
            for bit in rng.choice(64, size=bit_count, replace=False):
                flips[row] |= np.uint64(1) << np.uint64(int(bit))
    return flips


def planted_codes(n: int, threshold: int, seed: int = 0) -> np.ndarray:
    """n random 64-bit codes, 1% of them near copies (1..threshold bits flipped) of others."""
    rng = np.random.default_rng(seed)
    k = n // 100
    codes = rng.integers(0, 2**64 - 1, size=n - k, dtype=np.uint64)
    return np.concatenate([codes, codes[rng.integers(0, n - k, size=k)] ^ near_flips(k, threshold, rng)])


def photo_like_codes(n: int, threshold: int, seed: int = 0) -> np.ndarray:
    """n codes that keep the clustering of real pHash codes: 4,000 pHashes of random crops of the
    bundled photos, each generated code one of them with 12..28 random bits flipped, plus 1% planted
    near copies as in `planted_codes`."""
    import imagehash

    rng = np.random.default_rng(seed)
    photos = [p for _, p in load_photos() if min(p.shape[:2]) >= 160]
    real = []
    for _ in range(4000):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(64, min(photo.shape[:2]) + 1))
        y, x = (int(rng.integers(photo.shape[k] - side + 1)) for k in (0, 1))
        real.append(int(str(imagehash.phash(Image.fromarray(photo[y:y + side, x:x + side]))), 16))
    real = np.array(real, dtype=np.uint64)
    k = n // 100
    flips = np.zeros(n - k, dtype=np.uint64)
    counts = rng.integers(12, 29, size=n - k)
    for bit in range(64):  # each code gets `counts` distinct random bits, drawn bit by bit
        take = rng.random(n - k) < counts / (64 - bit)
        flips[take] |= np.uint64(1) << np.uint64(bit)
        counts = counts - take
    codes = real[rng.integers(0, len(real), size=n - k)] ^ flips
    return np.concatenate([codes, codes[rng.integers(0, n - k, size=k)] ^ near_flips(k, threshold, rng)])


def bench_search(args, root: str) -> None:
    t = DEFAULT_THRESHOLDS["phash"]
    if args.imagededup_only:
        return bench_imagededup_search(args, root, {(args.search_n, t): args.ours_seconds})
    sizes = [int(n) for n in args.search_sizes.split(",")]
    make = planted_codes if args.codes == "uniform" else photo_like_codes
    print(f"\n(b, c) search, threshold {t} (pHash default) and 8, {args.codes} codes with 1% planted near copies")
    print(f"    {'n':>9} {'t':>3} {'workers':>8} {'seconds':>9} {'pairs':>8} {'growth per 10x':>15}")
    ours = {}
    for threshold in [int(x) for x in args.thresholds.split(",")]:
        for workers in sorted({1, args.workers}) if not args.no_one_worker else [args.workers]:
            previous = None
            for n in sizes:
                codes = make(n, threshold)
                start = time.perf_counter()
                i, _, _ = near_pairs(codes, threshold, parts=workers, run_jobs=LocalExecutor(workers).map)
                seconds = time.perf_counter() - start
                ours[(n, threshold)] = seconds  # the last (most workers) is compared with imagededup
                growth = f"{seconds / previous:.1f}x" if previous else ""
                print(f"    {n:>9} {threshold:>3} {workers:>8} {seconds:>9.2f} {len(i):>8} {growth:>15}")
                previous = seconds
    if args.imagededup_python:
        bench_imagededup_search(args, root, ours)


def bench_imagededup_search(args, root: str, ours: dict) -> None:
    t = DEFAULT_THRESHOLDS["phash"]
    for method in ("bktree", "brute_force_cython"):
        sizes, seconds = [2_000, 4_000], []
        for n in sizes:
            path = os.path.join(root, f"codes-{n}.npy")
            np.save(path, planted_codes(n, t))
            seconds.append(run_json(args.imagededup_python, IMAGEDEDUP_SEARCH, path, method, t,
                                    args.workers)["seconds"])
        scale = seconds[-1] / sizes[-1] ** 2
        extrapolated = scale * args.search_n**2
        print(f"    imagededup {method:<19} {sizes[0]}: {seconds[0]:.1f} s, {sizes[1]}: {seconds[1]:.1f} s "
              f"(growth {seconds[1] / seconds[0]:.1f}x per 2x); at {args.search_n:,} ~ {extrapolated:,.0f} s "
              f"(n^2)  ->  imagesieve is {extrapolated / ours[(args.search_n, t)]:,.0f}x faster  (target >= 100x)")


def bench_quality(args, root: str) -> None:
    """Quality with thresholds chosen on one half of the labelled set and scored on the other half."""
    labelled = build_labelled_set()
    test = split(labelled, 1)
    print(f"\n(d) quality on {len(labelled.images)} images ({int((np.array(labelled.transform) == 'original').sum())} "
          "real-photo tiles x 11 transforms): thresholds chosen by best F1 on the tiles of one half, scored on "
          f"the other half ({len(test)} images, all pairs; hflip pairs excluded unless noted)")
    print(f"    {'tool':<12} {'hash':<6} {'t chosen':>8} {'precision':>10} {'recall':>7} {'F1':>6}   "
          f"{'our default t':>13} {'F1 there':>8}")
    for method, default in DEFAULT_THRESHOLDS.items():
        dist = pair_distances(*hash_set(labelled, method))
        best, s = held_out(labelled, dist, method)
        at_default = score(subset(labelled, test), dist[np.ix_(test, test)], method, default, ("hflip",))
        print(f"    {'imagesieve':<12} {method:<6} {best:>8} {s.precision:>10.3f} {s.recall:>7.3f} {s.f1:>6.3f}   "
              f"{default:>13} {at_default.f1:>8.3f}")
    dist = pair_distances(*hash_set(labelled, "phash", True))
    best, s = held_out(labelled, dist, "phash", exclude=())
    print(f"    {'imagesieve':<12} {'phash':<6} {best:>8} {s.precision:>10.3f} {s.recall:>7.3f} {s.f1:>6.3f}   "
          f"--flip, hflip pairs included: hflip recall {s.recall_by_transform['hflip']:.2f}")
    if not args.imagededup_python:
        return
    folder = os.path.join(root, "labelled")
    os.makedirs(folder)
    for i, data in enumerate(labelled.images):
        with open(os.path.join(folder, f"{i:06d}.img"), "wb") as f:
            f.write(data)
    theirs = run_json(args.imagededup_python, IMAGEDEDUP_HASH_FILES, folder, len(labelled.images))
    for method, hexes in theirs.items():
        codes = np.array([int(h, 16) for h in hexes], dtype=np.uint64)
        best, s = held_out(labelled, pair_distances(codes), method)
        print(f"    {'imagededup':<12} {method:<6} {best:>8} {s.precision:>10.3f} {s.recall:>7.3f} {s.f1:>6.3f}   "
              f"(its default 10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--search-n", type=int, default=1_000_000, help="the size compared with imagededup")
    parser.add_argument("--search-sizes", default="10000,100000,1000000", help="sizes of the growth table")
    parser.add_argument("--codes", choices=["uniform", "photo-like"], default="uniform")
    parser.add_argument("--thresholds", default="10,8", help="search thresholds of the growth table")
    parser.add_argument("--no-one-worker", action="store_true", help="search rows on --workers only")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sets", default="uniform,mixed", help="image sets of (a): uniform, mixed, or both")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--imagededup-python", default=None, help="python of a venv with imagededup installed")
    parser.add_argument("--only", choices=["encode", "search", "quality"], default=None)
    parser.add_argument("--imagededup-only", action="store_true",
                        help="with --only search: time only imagededup, against --ours-seconds at --search-n")
    parser.add_argument("--ours-seconds", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-find-") as root:
        if args.only in (None, "encode"):
            bench_encode(args, root)
        if args.only in (None, "quality"):
            bench_quality(args, root)
        if args.only in (None, "search"):
            bench_search(args, root)


if __name__ == "__main__":
    main()

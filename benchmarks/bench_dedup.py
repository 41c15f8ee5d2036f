"""Benchmark `imagesieve dedup` as a user runs it: the CLI at its defaults, one process tree, on
photo-like shards at two duplicate densities, with wall time per phase, peak memory of the whole
tree, growth per size step, and the share of removals that are planted copies.

Data (made once per size and density under --work, 1,000 samples a shard, KEY.jpg/txt/json):
  sparse  2x2 mosaics of 128-px tiles of real photos (scikit-image, scikit-learn), each tile at a
          random offset: distinct images that are not copies of each other; 16% planted copies
          (recompressed, resized or re-encoded) of random originals
  dense   256-px crops of the same photos at random offsets (many overlap: a catalogue or a crawl
          with many re-posts); 16% planted copies
Precision: the share of removed samples that are planted copies or whose original is itself a
removed sample's original (sparse only: in `dense`, overlapping crops are near-copies by design).

Usage:
  python benchmarks/bench_dedup.py --sizes 100000,300000 --density sparse,dense --work /tmp/bd
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

SHARD = 1000
PLANTED = 0.16


def _photos() -> list[np.ndarray]:
    from imagesieve.workflows.sample_data import load_photos

    return [p for _, p in load_photos() if min(p.shape[:2]) >= 300]


def _jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _original(rng: np.random.Generator, photos: list[np.ndarray], density: str) -> Image.Image:
    if density == "dense":
        photo = photos[int(rng.integers(len(photos)))]
        y, x = int(rng.integers(photo.shape[0] - 255)), int(rng.integers(photo.shape[1] - 255))
        return Image.fromarray(photo[y:y + 256, x:x + 256])
    mosaic = Image.new("RGB", (256, 256))
    for k in range(4):
        photo = photos[int(rng.integers(len(photos)))]
        y, x = int(rng.integers(photo.shape[0] - 127)), int(rng.integers(photo.shape[1] - 127))
        tile = Image.fromarray(photo[y:y + 128, x:x + 128])
        mosaic.paste(tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else tile,
                     ((k % 2) * 128, (k // 2) * 128))
    return mosaic


def _copy(rng: np.random.Generator, image: Image.Image) -> bytes:
    kind = int(rng.integers(3))
    if kind == 0:
        return _jpeg(image, quality=int(rng.integers(40, 70)))
    if kind == 1:
        side = int(rng.integers(160, 240))
        return _jpeg(image.resize((side, side), Image.Resampling.BILINEAR))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _make_shard(args: tuple) -> list[tuple[str, str]]:
    """One shard; returns (copy key, original key) of its planted copies."""
    from imagesieve.workflows.sample_data import write_shard

    folder, number, density, seed = args
    rng = np.random.default_rng(seed * 100_003 + number)
    photos = _photos()
    keys, samples, planted, originals = [], [], [], []
    for i in range(SHARD):
        key = f"{number:05d}{i:04d}"
        if originals and rng.random() < PLANTED:
            original_key, image = originals[int(rng.integers(len(originals)))]
            data, planted_of = _copy(rng, image), original_key
            planted.append((key, planted_of))
            ext = "png" if data[:4] == b"\x89PNG" else "jpg"
        else:
            image = _original(rng, photos, density)
            originals.append((key, image))
            data, ext = _jpeg(image), "jpg"
        keys.append(key)
        samples.append({ext: data, "txt": f"a photo, sample {key}".encode(),
                        "json": json.dumps({"key": key, "url": f"http://example.com/{key}.jpg"}).encode()})
    write_shard(os.path.join(folder, f"{number:05d}.tar"), samples, keys)
    return planted


def make_data(work: str, size: int, density: str, workers: int) -> tuple[str, dict[str, str]]:
    folder = os.path.join(work, f"{density}-{size}")
    truth_path = os.path.join(folder, "planted.json")
    if os.path.exists(truth_path):
        with open(truth_path) as f:
            return os.path.join(folder, "shards"), json.load(f)
    os.makedirs(os.path.join(folder, "shards"), exist_ok=True)
    started = time.monotonic()
    with ProcessPoolExecutor(workers) as pool:
        parts = pool.map(_make_shard, [(os.path.join(folder, "shards"), n, density, 7) for n in range(size // SHARD)])
        truth = dict(pair for part in parts for pair in part)
    with open(truth_path, "w") as f:
        json.dump(truth, f)
    print(f"made {size:,} {density} samples in {time.monotonic() - started:.0f} s", flush=True)
    return os.path.join(folder, "shards"), truth


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MB), from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 2**20


def run_dedup(shards: str, out: str) -> tuple[float, float, dict]:
    """Wall seconds, peak MB of the whole process tree (sampled every 0.2 s) and the run's summary."""
    peak = [0.0]
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "imagesieve.cli", "dedup", "--quiet", shards, out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    wall = time.monotonic() - started
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"dedup failed: {err[-2000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        return wall, peak[0], json.load(f)


def precision(out: str, truth: dict[str, str]) -> tuple[float, float]:
    """(share of removals that are planted copies, share of planted copies removed)."""
    removed = set(pq.read_table(os.path.join(out, "removed.parquet"), columns=["id"]).column("id").to_pylist())
    hits = len(removed & set(truth))
    return hits / max(len(removed), 1), hits / max(len(truth), 1)


def folder_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(path) for n in names) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,300000")
    parser.add_argument("--density", default="sparse,dense")
    parser.add_argument("--work", default="/tmp/bench_dedup")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    rows = []
    for density in args.density.split(","):
        previous = None
        for size in map(int, args.sizes.split(",")):
            shards, truth = make_data(args.work, size, density, args.workers)
            out = os.path.join(args.work, f"out-{density}-{size}")
            subprocess.run(["rm", "-rf", out], check=True)
            wall, peak, summary = run_dedup(shards, out)
            prec, recall = precision(out, truth)
            seconds = summary.get("seconds", {})
            growth = f"{wall / previous[1]:.1f}x per {size / previous[0]:.0f}x" if previous else ""
            rows.append((density, size, wall, seconds.get("find", 0), seconds.get("remove", 0),
                         seconds.get("report", 0), peak, folder_mb(os.path.join(out, "report")),
                         summary["removal"]["removed"], prec, recall, growth))
            previous = (size, wall)
            print(rows[-1], flush=True)
    print("\n| density | images | wall s | find s | remove s | report s (share) | peak MB (tree) | report MB "
          "| removed | planted share of removed | planted found | growth |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for d, n, wall, find, remove, report, peak, rmb, removed, prec, recall, growth in rows:
        print(f"| {d} | {n:,} | {wall:.0f} | {find:.0f} | {remove:.0f} | {report:.1f} ({report / wall:.0%}) "
              f"| {peak:,.0f} | {rmb:.0f} | {removed:,} | {prec:.3f} | {recall:.3f} | {growth} |")


if __name__ == "__main__":
    main()

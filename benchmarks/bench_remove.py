"""Benchmark `imagesieve remove` against baselines on the same shards and cores, in one run.

  (a) throughput vs a raw copy of the same tar files (the ceiling: pure I/O)
  (b) throughput vs a naive loop: webdataset read -> Python set filter -> webdataset TarWriter
(memory of the ID index against a Python set: benchmarks/bench_id_index.py)

Prints a table of medians and ratios. Usage:
  python benchmarks/bench_remove.py [--samples 20000] [--side 256] [--repeat 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from imagesieve.executors.local import LocalExecutor
from imagesieve.sample_data import load_photos, write_shard
from imagesieve.workflows.remove import remove_duplicates


def make_dataset(root: str, samples: int, shard_size: int, listed_fraction: float, side: int = 256
                 ) -> tuple[str, str]:
    """Shards of real photo crops of side x side pixels (JPEG q85; ~15 KB at 256) with caption and JSON."""
    rng = np.random.default_rng(0)
    photos = [p for _, p in load_photos() if min(p.shape[:2]) >= 256]
    photos = [np.asarray(Image.fromarray(p).resize((p.shape[1] * side // 256, p.shape[0] * side // 256)))
              for p in photos] if side > 256 else photos
    shard_dir, ids_dir = os.path.join(root, "shards"), os.path.join(root, "dups")
    os.makedirs(shard_dir, exist_ok=True)
    keys = [f"{i:09d}" for i in range(samples)]
    for shard_no, start in enumerate(range(0, samples, shard_size)):
        batch = []
        for _ in keys[start:start + shard_size]:
            photo = photos[int(rng.integers(len(photos)))]
            y = int(rng.integers(photo.shape[0] - side + 1))
            x = int(rng.integers(photo.shape[1] - side + 1))
            buffer = io.BytesIO()
            Image.fromarray(photo[y:y + side, x:x + side]).save(buffer, format="JPEG", quality=85)
            batch.append({"jpg": buffer.getvalue(), "txt": b"a caption", "json": b'{"url": "http://x"}'})
        write_shard(os.path.join(shard_dir, f"{shard_no:05d}.tar"), batch, keys[start:start + shard_size])
    listed = rng.choice(samples, size=int(samples * listed_fraction), replace=False)
    os.makedirs(ids_dir, exist_ok=True)
    pq.write_table(pa.table({"id": [keys[i] for i in sorted(listed)]}), os.path.join(ids_dir, "ids.parquet"))
    return shard_dir, ids_dir


def run_raw_copy(shard_dir: str, out: str) -> None:
    """Read and write every byte of every shard (what `cat a > b` does)."""
    os.makedirs(out)
    for name in sorted(os.listdir(shard_dir)):
        with open(os.path.join(shard_dir, name), "rb") as src, open(os.path.join(out, name), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def run_kernel_copy(shard_dir: str, out: str) -> None:
    """`shutil.copyfile`: the kernel copies (or, on file systems that can, shares) the blocks."""
    os.makedirs(out)
    for name in sorted(os.listdir(shard_dir)):
        shutil.copyfile(os.path.join(shard_dir, name), os.path.join(out, name))


def run_naive_webdataset(shard_dir: str, ids_dir: str, out: str) -> None:
    import webdataset as wds

    listed = set(pq.read_table(ids_dir).column("id").to_pylist())
    os.makedirs(out)
    for name in sorted(os.listdir(shard_dir)):
        with wds.TarWriter(os.path.join(out, name), encoder=False) as sink:
            for sample in wds.WebDataset(os.path.join(shard_dir, name), shardshuffle=False):
                if sample["__key__"] not in listed:
                    sink.write({k: v for k, v in sample.items() if k != "__url__"})


def timed(fn, *args) -> float:
    """Seconds to run fn; dirty pages of earlier runs are flushed first, so no method pays for another's
    writes (the kernel throttles writers once too much unwritten data piles up)."""
    os.sync()
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--side", type=int, default=256, help="image side in pixels (larger: bigger files)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-remove-")
    shard_dir, ids_dir = make_dataset(workdir, args.samples, args.shard_size, 0.10, args.side)
    size_mb = sum(os.path.getsize(os.path.join(shard_dir, f)) for f in os.listdir(shard_dir)) / 1e6
    print(f"data: {args.samples} samples ({args.side}px JPEGs) in {len(os.listdir(shard_dir))} shards, "
          f"{size_mb:.0f} MB, 10% listed; {args.workers} workers; median of {args.repeat} runs, methods interleaved")

    names = ["kernel copy (copyfile)", "raw copy", "naive webdataset loop", "imagesieve (1 worker)",
             f"imagesieve ({args.workers} workers)"]
    times: dict[str, list[float]] = {name: [] for name in names}
    methods = {
        names[0]: lambda out: run_kernel_copy(shard_dir, out),
        names[1]: lambda out: run_raw_copy(shard_dir, out),
        names[2]: lambda out: run_naive_webdataset(shard_dir, ids_dir, out),
        # every run builds its own ID index (a fresh cache folder), as a first run on new IDs does
        names[3]: lambda out: remove_duplicates(shard_dir, out, ids_dir, "id", LocalExecutor(1),
                                                cache_dir=out + ".cache"),
        names[4]: lambda out: remove_duplicates(shard_dir, out, ids_dir, "id", LocalExecutor(args.workers),
                                                cache_dir=out + ".cache"),
    }
    for run in range(args.repeat):
        # each method starts from the same state: the others' output deleted and flushed, order rotated
        for k in range(len(names)):
            name = names[(run + k) % len(names)]
            out = os.path.join(workdir, f"out-{run}-{k}")
            times[name].append(timed(methods[name], out))
            shutil.rmtree(out)
            shutil.rmtree(out + ".cache", ignore_errors=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    ours = median[f"imagesieve ({args.workers} workers)"]
    print(f"\n{'method':<28}{'median s':>10}{'MB/s':>9}{'samples/s':>11}")
    for name, seconds in median.items():
        print(f"{name:<28}{seconds:>10.2f}{size_mb / seconds:>9.0f}{args.samples / seconds:>11.0f}")
    print(f"\n(a) imagesieve / raw copy throughput      {median['raw copy'] / ours:.2f}x   (target >= 0.5x)")
    print(f"    imagesieve / kernel copy              {median['kernel copy (copyfile)'] / ours:.2f}x")
    print(f"(b) imagesieve / naive webdataset loop    {median['naive webdataset loop'] / ours:.2f}x   (target >= 3x)")
    print(f"    same, both on 1 core                  "
          f"{median['naive webdataset loop'] / median['imagesieve (1 worker)']:.2f}x")

    if not args.workdir:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()

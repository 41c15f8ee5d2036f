"""Benchmark `imagesieve remove` against baselines on the same shards and cores, in one run.

  (a) throughput vs a raw copy of the same tar files (the ceiling: pure I/O)
  (b) throughput vs a naive loop: webdataset read -> Python set filter -> webdataset TarWriter
(memory of the ID index against a Python set: benchmarks/bench_id_index.py)

Throughput is marginal: the run on all shards minus the run on their first third, best of 5, so
that process start-up, listing and the ID index build cancel out for every method alike (the issue's
method). The raw copy is one process; imagesieve is shown on 1 worker (equal cores) and on N.
CPU µs/sample (user + system, all processes, of the run whose wall time was best) shows what a
noisy machine does to the wall figures.
Usage:
  python benchmarks/bench_remove.py [--samples 30000] [--sides 300 680] [--repeat 5] [--naive]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from imagesieve.executors.local import LocalExecutor
from imagesieve.workflows.remove import remove_duplicates
from imagesieve.workflows.sample_data import load_photos, write_shard


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


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children (forked workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """Wall and CPU seconds to run fn; dirty pages of earlier runs are flushed first, so no method pays
    for another's writes (the kernel throttles writers once too much unwritten data piles up)."""
    os.sync()
    start, cpu = time.perf_counter(), cpu_seconds()
    fn(*args)
    return time.perf_counter() - start, cpu_seconds() - cpu


def subset(shard_dir: str, fraction: float, out: str) -> str:
    """The first `fraction` of the shards, hard-linked (the same bytes, the same page cache)."""
    os.makedirs(out, exist_ok=True)
    names = sorted(os.listdir(shard_dir))
    for name in names[:max(1, round(len(names) * fraction))]:
        os.link(os.path.join(shard_dir, name), os.path.join(out, name))
    return out


def measure(methods: dict, sources: dict[str, str], workdir: str, repeat: int
            ) -> dict[tuple[str, str], tuple[float, float]]:
    """Best of `repeat` (wall, CPU) seconds per (method, source); methods interleaved, each run from a
    flushed state."""
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for run in range(repeat):
        names = list(methods)
        for k in range(len(names)):
            name = names[(run + k) % len(names)]
            for source_name, source in sources.items():
                out = os.path.join(workdir, f"out-{run}-{k}-{source_name}")
                seconds = timed(methods[name], source, out)
                best[name, source_name] = min(best.get((name, source_name), (float("inf"), 0.0)), seconds)
                shutil.rmtree(out)
                shutil.rmtree(out + ".cache", ignore_errors=True)
    return best


def bench_size(args: argparse.Namespace, side: int, naive: bool) -> dict[str, float]:
    """Marginal seconds per method: (all shards) - (the first third), best of `repeat`, so that start-up,
    listing and the ID index build (the same IDs in both runs) cancel out for every method alike."""
    workdir = tempfile.mkdtemp(prefix="bench-remove-", dir=args.workdir)
    shard_dir, ids_dir = make_dataset(workdir, args.samples, args.shard_size, 0.10, side)
    small = subset(shard_dir, 1 / 3, os.path.join(workdir, "small"))
    sizes = {d: sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) for d in (shard_dir, small)}
    samples = {shard_dir: args.samples, small: args.samples * len(os.listdir(small)) // len(os.listdir(shard_dir))}
    methods = {
        "raw copy (1 process)": lambda src, out: run_raw_copy(src, out),
        "kernel copy (copyfile)": lambda src, out: run_kernel_copy(src, out),
        # every run builds its own ID index (a fresh cache folder), as a first run on new IDs does
        "imagesieve, 1 worker": lambda src, out: remove_duplicates(src, out, ids_dir, "id", LocalExecutor(1),
                                                                   cache_dir=out + ".cache"),
        f"imagesieve, {args.workers} workers": lambda src, out: remove_duplicates(
            src, out, ids_dir, "id", LocalExecutor(args.workers), cache_dir=out + ".cache"),
    }
    if naive:
        methods["naive webdataset loop"] = lambda src, out: run_naive_webdataset(src, ids_dir, out)
    best = measure(methods, {"all": shard_dir, "third": small}, workdir, args.repeat)
    marginal_mb = (sizes[shard_dir] - sizes[small]) / 1e6
    marginal_samples = samples[shard_dir] - samples[small]
    print(f"\n{side}px JPEGs + txt + json: {sizes[shard_dir] / args.samples / 1e3:.1f} KB a sample; marginal "
          f"{marginal_samples} samples, {marginal_mb:.0f} MB (all {len(os.listdir(shard_dir))} shards minus the "
          f"first third), 10% listed; best of {args.repeat}")
    print(f"{'method':<26}{'all s':>8}{'third s':>9}{'marginal s':>12}{'MB/s':>8}{'µs/sample':>11}"
          f"{'CPU µs/sample':>15}")
    marginal = {}
    for name in methods:
        (wall_all, cpu_all), (wall_third, cpu_third) = best[name, "all"], best[name, "third"]
        marginal[name] = wall_all - wall_third
        print(f"{name:<26}{wall_all:>8.3f}{wall_third:>9.3f}{marginal[name]:>12.3f}"
              f"{marginal_mb / marginal[name]:>8.0f}{marginal[name] / marginal_samples * 1e6:>11.1f}"
              f"{(cpu_all - cpu_third) / marginal_samples * 1e6:>15.1f}")
    shutil.rmtree(workdir)
    return marginal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=30_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--sides", type=int, nargs="+", default=[300, 1000],
                        help="image sides in pixels: 300 gives ~20 KB a sample, 1000 ~100 KB")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.8],
                        help="the target (imagesieve / raw copy) at each side")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--naive", action="store_true", help="also time the naive webdataset loop (slow)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    print(f"bench_remove: {args.samples} samples per size, {args.workers} workers for the multi-worker row; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    for side, target in zip(args.sides, args.targets, strict=True):
        marginal = bench_size(args, side, args.naive and side == args.sides[0])
        for baseline in ("raw copy (1 process)", "kernel copy (copyfile)"):
            for name in [n for n in marginal if n.startswith("imagesieve")]:
                rows.append((side, f"{name} / {baseline.split(' (')[0]}", marginal[baseline] / marginal[name], target))
        if "naive webdataset loop" in marginal:
            rows.append((side, "naive loop / imagesieve 1 worker",
                         marginal["naive webdataset loop"] / marginal["imagesieve, 1 worker"], 3.0))
    print(f"\n{'side':<6}{'throughput ratio':<44}{'value':>8}{'target':>8}  check")
    for side, label, value, target in rows:
        print(f"{side:<6}{label:<44}{value:>7.2f}x{target:>7.2f}x  {'met' if value >= target else 'NOT met'}")


if __name__ == "__main__":
    main()

"""Whole-run peak memory of `imagesieve remove` with many listed IDs, against a Python set of the same IDs.

What a user pays, measured from outside: the peak of the summed PSS (proportional set size) of the
whole process tree of `imagesieve remove` (driver, index build, workers), sampled every 10 ms, minus
the same run with a handful of IDs. The baseline is the reference's approach: one process reads the
same Parquet files and holds the IDs in a Python `set[str]` (the reference holds one per worker;
one is counted here). Every run builds its own index (a fresh cache folder).

  python benchmarks/bench_id_index.py --ids 10000000
  python benchmarks/bench_id_index.py --ids 100000000 --no-set   # the set would need ~16 GB
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imagesieve.workflows.sample_data import write_shard

SET_PROBE = r"""
import sys, pyarrow.parquet as pq
ids = set()
for path in sys.argv[1:]:
    ids.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
print(len(ids))
"""


def tree_pss(root: int) -> int:
    """Summed PSS in bytes of `root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue
    return total


def peak_pss(command: list[str]) -> tuple[int, float]:
    """(peak summed PSS of the command's process tree, seconds) of one run."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(proc.pid))
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {proc.stderr.read().decode()[-2000:]}")
    return peak, seconds


def write_ids(folder: str, n: int, files: int) -> list[str]:
    """n distinct 12-digit IDs (the even numbers) in `files` Parquet files of 1M-row groups."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    per_file = -(-n // files)
    for k in range(files):
        start, stop = k * per_file, min(n, (k + 1) * per_file)
        path = os.path.join(folder, f"part-{k:05d}.parquet")
        with pq.ParquetWriter(path, pa.schema([("id", pa.string())])) as writer:
            for lo in range(start, stop, 1_000_000):
                values = np.arange(lo, min(stop, lo + 1_000_000), dtype=np.int64) * 2
                writer.write_table(pa.table({"id": pa.array(np.char.zfill(values.astype(str), 12))}))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-set", action="store_true", help="skip the Python set baseline")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench-ids-")
    shards = os.path.join(work, "shards")
    keys = [f"{i:012d}" for i in range(4000)]  # every other key is listed
    for s in range(4):
        write_shard(os.path.join(shards, f"{s:05d}.tar"), [{"jpg": b"\xff\xd8 not decoded", "txt": b"c"}] * 1000,
                    keys[s * 1000:(s + 1) * 1000])
    started = time.perf_counter()
    files = write_ids(os.path.join(work, "ids"), args.ids, args.files)
    print(f"{args.ids:,} IDs in {args.files} Parquet files, "
          f"{sum(os.path.getsize(f) for f in files) / 1e6:.0f} MB (written in {time.perf_counter() - started:.0f} s)")
    write_ids(os.path.join(work, "few"), 10, 1)

    def remove(ids: str, tag: str) -> tuple[int, float]:
        out, cache = os.path.join(work, f"out-{tag}"), os.path.join(work, f"cache-{tag}")
        result = peak_pss([sys.executable, "-m", "imagesieve.cli", "remove", "--quiet", "--workers",
                           str(args.workers), "--cache-dir", cache, "--duplicates", ids, shards, out])
        shutil.rmtree(out)
        shutil.rmtree(cache)
        return result

    base, _ = remove(os.path.join(work, "few"), "few")
    ours, ours_s = remove(os.path.join(work, "ids"), "many")
    print(f"\n{'run':<46}{'peak PSS MB':>12}{'seconds':>9}")
    print(f"{'imagesieve remove, 10 IDs (the floor)':<46}{base / 1e6:>12.0f}")
    print(f"{f'imagesieve remove, {args.ids:,} IDs':<46}{ours / 1e6:>12.0f}{ours_s:>9.1f}")
    print(f"{'  of which the IDs (difference)':<46}{(ours - base) / 1e6:>12.0f}")
    if not args.no_set:
        floor, _ = peak_pss([sys.executable, "-c", SET_PROBE, *write_ids(os.path.join(work, "few2"), 10, 1)])
        held, set_s = peak_pss([sys.executable, "-c", SET_PROBE, *files])
        print(f"{'Python set[str] of the same IDs (difference)':<46}{(held - floor) / 1e6:>12.0f}{set_s:>9.1f}")
        ratio = (ours - base) / (held - floor)
        print(f"\nratio imagesieve / set, whole run: {ratio:.3f}   (target <= 0.125: "
              f"{'met' if ratio <= 0.125 else 'NOT met'})")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

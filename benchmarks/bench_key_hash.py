"""xxh64 of keys: the compiled kernel (`tar/key_hash_kernel.py`) against the `xxhash` package, and what the
difference is worth in `imagesieve remove` (the issue 24 question: keep the kernel only if it saves > 3%).

  (a) per key, warm, on keys like `00001234` and img2dataset's `000012345`: `xxh64_many` over the Arrow
      buffers vs `xxhash.xxh64_intdigest` per key over the same buffers (`by_package`)
  (b) `remove` on 1 worker, CPU µs a sample (user + system of every process), the key hashes made by the
      kernel (as shipped) or by the package (the kernel's one call replaced), runs interleaved; and the CPU
      spent inside the hashing call

CPU seconds (steadier than wall time on a shared machine), medians of `--repeat` runs, the methods interleaved.
Usage:
  python benchmarks/bench_key_hash.py [--keys 100000 1000000] [--samples 3000] [--repeat 5]

Measured (2 shared cores, load average 5-7, default options): per key, kernel 17-28 ns, package 206-306 ns,
on 100k and 1M keys of either shape. In `remove` (marginal CPU of 1 worker, 25.5 µs a sample) the hashing
itself took 0.064-0.069 µs a sample by the kernel, 0.49-0.50 by the package: the kernel saves 0.43 µs, 1.7%.
Whole runs differ by less than their noise (medians 25.2 / 26.3 µs, ranges 21.8-34.5 / 23.7-42.2 over 15;
paired over 20 whole runs, the package costs 0.12 µs a sample more, quartiles -1.2 and +1.7). Under the 3%
issue 24 asks of a second implementation: the kernel was deleted, this script is kept in history only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import xxhash
from bench_remove import cpu_seconds, make_dataset, subset

from imagesieve.executors.local import LocalExecutor
from imagesieve.tar import grouping_kernel, read
from imagesieve.tar.key_hash_kernel import xxh64_many
from imagesieve.util.arrow_strings import string_buffers
from imagesieve.workflows.remove import remove_duplicates


def from_strings(strings: pa.Array) -> np.ndarray:
    """The package from an Arrow array of keys, as `key_hash.hash_strings` uses it (its fastest use from Python:
    one call per key, mapped over the encoded keys)."""
    return np.fromiter(map(xxhash.xxh64_intdigest, map(str.encode, strings.to_pylist())), np.uint64, len(strings))


def by_package(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """`xxh64_many` with the package: the buffers as Arrow strings, then `from_strings`."""
    strings = pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(buf))
    return from_strings(strings)


def runs(methods: dict, repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in methods}
    for run in range(repeat):
        names = list(methods)
        for k in range(len(names)):
            name = names[(run + k) % len(names)]
            times[name].append(methods[name]())
    return times


def medians(methods: dict, repeat: int) -> dict[str, float]:
    return {name: statistics.median(t) for name, t in runs(methods, repeat).items()}


def cpu(fn, *args) -> float:
    start = time.process_time()
    fn(*args)
    return time.process_time() - start


def per_key(counts: list[int], repeat: int) -> None:
    for count in counts:
        for style, form in (("00001234", "{:08d}"), ("img2dataset 000012345", "{:09d}")):
            keys = pa.array([form.format(i) for i in range(count)], pa.large_string())
            buffers = string_buffers(keys)
            want = xxh64_many(*buffers)
            assert (by_package(*buffers) == want).all() and (from_strings(keys) == want).all()
            got = medians({"kernel": lambda b=buffers: cpu(xxh64_many, *b),
                           "xxhash package": lambda b=buffers: cpu(by_package, *b)}, repeat)
            print(f"{count:>9} keys like {style:<22}" + "".join(f"  {name}: {seconds / count * 1e9:6.0f} ns"
                                                              for name, seconds in got.items()))


def remove_cost(samples: int, repeat: int) -> None:
    """Marginal CPU µs a sample (the run on all shards minus the run on their first third, as bench_remove
    takes it), read as a large run reads (the compiled parser), its keys hashed by the kernel or the package;
    and the CPU spent inside that hashing call alone (1 worker runs in this process), which the difference of
    two whole runs is too noisy to show."""
    workdir = tempfile.mkdtemp(prefix="bench-key-hash-")
    shards, ids = make_dataset(workdir, samples, 1000, 0.10, 300)
    third = subset(shards, 1 / 3, os.path.join(workdir, "third"))
    count = {shards: samples, third: samples * len(os.listdir(third)) // len(os.listdir(shards))}
    kernel, read.TARFILE_MEMBERS = grouping_kernel.xxh64_many, 0
    spent = [0.0]

    def timed(hashing):
        def call(*args):
            start = time.process_time()
            hashes = hashing(*args)
            spent[0] += time.process_time() - start
            return hashes
        return call

    def run(hashing, source: str) -> tuple[float, float]:
        grouping_kernel.xxh64_many, spent[0] = timed(hashing), 0.0
        out = os.path.join(workdir, "out")
        os.sync()
        cpu = cpu_seconds()
        remove_duplicates(source, out, ids, "id", LocalExecutor(1), cache_dir=out + ".cache", progress=False)
        cpu = cpu_seconds() - cpu
        shutil.rmtree(out)
        shutil.rmtree(out + ".cache")
        return cpu, spent[0]

    def marginal(hashing) -> tuple[float, float]:
        (all_cpu, all_hash), (third_cpu, _) = run(hashing, shards), run(hashing, third)
        return (all_cpu - third_cpu) / (count[shards] - count[third]) * 1e6, all_hash / samples * 1e6

    marginal(kernel), marginal(by_package)  # warm: page cache, compiled loops
    times = runs({"kernel": lambda: marginal(kernel), "xxhash package": lambda: marginal(by_package)}, repeat)
    grouping_kernel.xxh64_many = kernel
    shutil.rmtree(workdir)
    whole = {name: [t[0] for t in got] for name, got in times.items()}
    hashing = {name: statistics.median(t[1] for t in got) for name, got in times.items()}
    print(f"\nremove, 1 worker, {samples} samples of ~20 KB, marginal CPU µs a sample (median of {repeat}, range): "
          + ", ".join(f"{name} {statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})" for name, t in whole.items()))
    saved = hashing["xxhash package"] - hashing["kernel"]
    print("inside it, hashing the keys, CPU µs a sample: " + ", ".join(f"{n} {v:.3f}" for n, v in hashing.items())
          + f"; the kernel saves {saved:.3f} µs, {saved / statistics.median(whole['kernel']) * 100:.1f}% of remove")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"bench_key_hash: load average before: {os.getloadavg()[0]:.2f}")
    per_key(args.keys, args.repeat)
    if args.samples:
        remove_cost(args.samples, args.repeat)


if __name__ == "__main__":
    main()

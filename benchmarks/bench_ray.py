"""LocalExecutor vs RayExecutor on the same shards and cores, in one run: Ray's overhead on one machine.

Runs the removal workflow and the hash phase of `find` with each executor (2 workers / a local
Ray instance with 2 CPUs), medians of several runs, and prints throughput ratios.

Usage: python benchmarks/bench_ray.py [--samples 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_remove import make_dataset  # noqa: E402

from imagesieve.executors.local import LocalExecutor  # noqa: E402
from imagesieve.executors.ray import RayExecutor  # noqa: E402
from imagesieve.workflows.find import FindConfig, hash_shards  # noqa: E402
from imagesieve.workflows.remove import remove_duplicates  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=args.workers, log_to_driver=False, include_dashboard=False)
    root = tempfile.mkdtemp(prefix="bench-ray-")
    shards, dups = make_dataset(root, args.samples, 1000, 0.10)
    jobs = {
        # a fresh cache folder per run: every run builds its own ID index
        "remove": lambda ex, out: remove_duplicates(shards, out, dups, executor=ex, cache_dir=out + ".cache"),
        "find: hash phase": lambda ex, out: hash_shards(shards, out, out, FindConfig(), ex, False, "hash"),
    }
    executors = {"local": lambda: LocalExecutor(args.workers), "ray": lambda: RayExecutor()}
    print(f"{args.samples} samples in {args.samples // 1000} shards, {args.workers} workers, "
          f"median of {args.repeat} runs (Ray started once, before timing)")
    print(f"{'job':<18}{'local s':>9}{'ray s':>9}{'ray / local throughput':>25}")
    for job, run in jobs.items():
        times = {name: [] for name in executors}
        for rep in range(args.repeat):
            for name, make in executors.items():
                out = os.path.join(root, f"{job[:4]}-{name}-{rep}")
                os.sync()  # each run starts from the same state: no other run's writes still pending
                start = time.perf_counter()
                run(make(), out)
                times[name].append(time.perf_counter() - start)
                shutil.rmtree(out)
                shutil.rmtree(out + ".cache", ignore_errors=True)
        local, on_ray = statistics.median(times["local"]), statistics.median(times["ray"])
        print(f"{job:<18}{local:>9.2f}{on_ray:>9.2f}{local / on_ray:>24.2f}x")
    ray.shutdown()
    shutil.rmtree(root)


if __name__ == "__main__":
    main()

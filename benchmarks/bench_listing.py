"""What listing a shard costs with each reader, and what loading the compiled one costs: `read.TARFILE_MEMBERS`.

  (a) listing alone, warm: `listing.list_members` (tarfile, strict) vs `headers.parse_headers` (numba)
  (b) a whole `ShardTable` with its key hashes, warm: listed by tarfile and grouped member by member
      (`xxhash` per key) vs listed and grouped by the compiled loops
  (c) loading the compiled reader in a fresh process (numba and the compiled loops, from their cache):
      importing it and a first table, minus the same first table read by tarfile

Shards of small members (`00001234.jpg` of 1 KB and `00001234.txt` of 30 bytes, the worst case for
listing: most of a shard is headers). Timings are CPU seconds of the process (steadier than wall time on a
shared machine), medians of `--repeat` runs, the two readers interleaved.
Usage:
  python benchmarks/bench_listing.py [--members 1000 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

from imagesieve.tar import read
from imagesieve.tar.headers import parse_headers
from imagesieve.tar.listing import list_members


def make_shard(path: str, members: int) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for k in range(members):
            info = tarfile.TarInfo(f"{k // 2:08d}.{'txt' if k % 2 else 'jpg'}")
            data = b"a caption of about thirty bytes" if k % 2 else bytes(range(256)) * 4
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def compiled_listing(path: str) -> None:
    with open(path, "rb") as f:
        parse_headers(f.fileno(), os.fstat(f.fileno()).st_size)


def table(path: str, by_tarfile: bool) -> None:
    read.TARFILE_MEMBERS = 10**12 if by_tarfile else 0
    assert len(read.read_table(path).key_hashes)


def medians(methods: dict, repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in methods}
    for run in range(repeat):
        names = list(methods)
        for k in range(len(names)):
            name = names[(run + k) % len(names)]
            start = time.process_time()
            methods[name]()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


LOAD = """
import time, sys
from imagesieve.cli import skip_pyarrow_pandas_probe
from imagesieve.tar import read
skip_pyarrow_pandas_probe()  # as the command line does
start = time.process_time()
read.TARFILE_MEMBERS = {budget}
assert len(read.read_table(sys.argv[1]).key_hashes)
print(time.process_time() - start)
"""


def load_cost(path: str, repeat: int) -> tuple[float, float]:
    """Median seconds of a first table in a fresh process: read by tarfile, and by the compiled reader
    (importing numba and loading the compiled loops from their cache)."""
    costs: dict[int, list[float]] = {10**12: [], 0: []}
    for _ in range(repeat):
        for budget in costs:
            out = subprocess.run([sys.executable, "-c", LOAD.format(budget=budget), path], check=True,
                                 capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
            costs[budget].append(float(out.stdout))
    return statistics.median(costs[10**12]), statistics.median(costs[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[1000, 50_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"bench_listing: load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-listing-") as folder:
        per_member = {}
        for members in args.members:
            path = os.path.join(folder, f"{members}.tar")
            make_shard(path, members)
            table(path, True), table(path, False)  # warm: both readers loaded, the file in the page cache
            got = medians({"list: tarfile": lambda p=path: list_members(p),
                           "list: compiled": lambda p=path: compiled_listing(p),
                           "table: tarfile": lambda p=path: table(p, True),
                           "table: compiled": lambda p=path: table(p, False)}, args.repeat)
            print(f"\n{members} members ({os.path.getsize(path) / 1e6:.1f} MB), median of {args.repeat}:")
            for name, seconds in got.items():
                print(f"  {name:<16} {seconds * 1e3:9.2f} ms  {seconds / members * 1e6:7.2f} µs a member")
            per_member[members] = (got["table: tarfile"] - got["table: compiled"]) / members
        small = os.path.join(folder, "small.tar")
        make_shard(small, 2)
        first_tarfile, first_compiled = load_cost(small, args.repeat)
        price = first_compiled - first_tarfile
        print(f"\nfirst table in a fresh process (2 members), median of {args.repeat}: tarfile "
              f"{first_tarfile * 1e3:.0f} ms, compiled {first_compiled * 1e3:.0f} ms: loading costs "
              f"{price * 1e3:.0f} ms")
        for members, saved in per_member.items():
            print(f"the compiled reader saves {saved * 1e6:.2f} µs a member (at {members}): it pays from "
                  f"{price / saved:,.0f} members")


if __name__ == "__main__":
    main()

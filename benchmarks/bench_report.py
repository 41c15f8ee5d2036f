"""Benchmark `imagesieve report` on a run folder with many groups: wall time, peak memory, folder size.

The script writes synthetic shards of small JPEG crops of real photos (with captions) and a run
folder as `find` leaves it (groups/, hashes/, summary.json): `--groups` groups, most of two members,
some larger, a few of a hundred or more; exact and perceptual matches. It then builds the report in a
fresh process (2 workers) from this source tree and, with `--compare-src`, from another one (for
example the code before a change: `git archive <rev> src | tar -x -C /tmp/old`), and rebuilds it with
`--groups 100` to show what the rebuild prunes. Where Chromium is installed, it then opens the report
headless and prints how long after navigation the page showed its first groups (the page's own
`data-first-shown-ms`) and how long the browser process took in all: the open time the test suite
leaves to this benchmark.

Usage:
  python benchmarks/bench_report.py [--groups 100000] [--side 64] [--compare-src /tmp/old/src] [--work DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from imagesieve.workflows.sample_data import load_photos, write_shard

SHARD_SIZE = 1000
CHILD = """
import json, resource, sys, time
from imagesieve.executors.local import LocalExecutor
from imagesieve.report import write_report
started = time.monotonic()
write_report(sys.argv[1], max_groups=None if sys.argv[2] == "all" else int(sys.argv[2]), executor=LocalExecutor(2))
seconds = time.monotonic() - started
own, workers = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"seconds": seconds, "peak_mb": own / 1024, "worker_peak_mb": workers / 1024}))
"""


def group_sizes(groups: int, rng: np.random.Generator) -> np.ndarray:
    """Mostly pairs, a tail of larger groups, and a few of 100-300 members (a much re-posted image)."""
    sizes = 1 + rng.geometric(0.65, groups)
    sizes[rng.choice(groups, max(1, groups // 5000), replace=False)] = rng.integers(100, 300)
    return sizes


def make_run(root: str, groups: int, side: int) -> tuple[str, int]:
    """Shards under root/shards and a run folder root/run; returns the run folder and its image count."""
    rng = np.random.default_rng(0)
    photos = [p for _, p in load_photos() if min(p.shape[:2]) >= 256]
    sizes = group_sizes(groups, rng)
    images = int(sizes.sum())
    keys = [f"{i:09d}" for i in range(images)]
    shard_dir, run = os.path.join(root, "shards"), os.path.join(root, "run")
    os.makedirs(os.path.join(run, "groups"))
    os.makedirs(os.path.join(run, "hashes"))
    for shard_no, start in enumerate(range(0, images, SHARD_SIZE)):
        samples, info = [], {"id": [], "shard": [], "width": [], "height": [], "file_size": []}
        rel = f"{shard_no:05d}.tar"
        for key in keys[start:start + SHARD_SIZE]:
            photo = photos[int(rng.integers(len(photos)))]
            y, x = int(rng.integers(photo.shape[0] - side)), int(rng.integers(photo.shape[1] - side))
            buffer = io.BytesIO()
            Image.fromarray(photo[y:y + side, x:x + side]).save(buffer, format="JPEG", quality=85)
            samples.append({"jpg": buffer.getvalue(), "txt": f"a caption of {key}".encode()})
            for name, value in zip(info, (key, rel, side, side, len(buffer.getvalue())), strict=True):
                info[name].append(value)
        write_shard(os.path.join(shard_dir, rel), samples, keys[start:start + SHARD_SIZE])
        pq.write_table(pa.table(info), os.path.join(run, "hashes", rel + ".parquet"))
    group_id = np.repeat(np.arange(groups), sizes)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    kept = np.zeros(images, bool)
    kept[first] = True
    exact = rng.random(images) < 0.3
    method = np.where(kept, "kept", np.where(exact, "exact", "phash"))
    distance = np.where(kept | exact, 0, rng.integers(1, 11, images))
    ids = pa.array(keys)
    table = pa.table({"group_id": group_id, "kept_id": ids.take(pa.array(first[group_id])), "id": ids,
                      "method": method, "distance": distance})
    pq.write_table(table, os.path.join(run, "groups", "part-00000.parquet"))
    with open(os.path.join(run, "summary.json"), "w") as f:
        json.dump({"images": images, "groups": groups, "duplicates": images - groups, "threshold": 10,
                   "by_method": {"exact": int((exact & ~kept).sum()), "phash": int((~exact & ~kept).sum())},
                   "input": [shard_dir]}, f)
    return run, images


def folder_size(folder: str) -> tuple[float, int, int]:
    """(MB, data files, thumbnails) of a report folder."""
    total, data, thumbs = 0, 0, 0
    for root, _, names in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(root, n)) for n in names)
        data += len(names) if os.sep + "data" in root else 0
        thumbs += len(names) if root.endswith("thumbs") else 0
    return total / 1e6, data, thumbs


def build(src: str, run: str, groups: str = "all") -> dict:
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", CHILD, run, groups], env=env, capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["mb"], result["data_files"], result["thumbnails"] = folder_size(os.path.join(run, "report"))
    return result


def show(label: str, r: dict) -> None:
    print(f"{label:28s} {r['seconds']:7.1f} s  peak {r['peak_mb']:6.0f} MB (workers {r['worker_peak_mb']:4.0f} MB)  "
          f"folder {r['mb']:7.1f} MB  {r['data_files']:6d} data files  {r['thumbnails']:7d} thumbnails")


def open_in_browser(index: str, profile: str) -> str:
    """Open the report in headless Chromium: the page's first-shown time and the process's wall time."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return "not measured (no chromium)"
    started = time.monotonic()
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update",
                          f"--user-data-dir={profile}", "--window-size=1280,1000", "--virtual-time-budget=10000",
                          "--dump-dom", f"file://{index}"], capture_output=True, text=True, timeout=600).stdout
    wall = time.monotonic() - started
    shown = re.search(r'<body[^>]* data-first-shown-ms="(\d+)"', dom)
    return (f"first groups shown {shown.group(1)} ms after navigation" if shown else "no groups shown") + \
        f" (browser process {wall:.1f} s in all)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--side", type=int, default=64, help="pixels of each JPEG crop")
    parser.add_argument("--compare-src", help="another source tree (its src/ folder) to build the same report with")
    parser.add_argument("--work", help="folder for the shards and run (default: a temp folder, deleted)")
    args = parser.parse_args()
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    root = args.work or tempfile.mkdtemp(prefix="bench-report-")
    try:
        started = time.monotonic()
        run, images = make_run(root, args.groups, args.side)
        print(f"{args.groups:,} groups, {images:,} images in groups, {-(-images // SHARD_SIZE)} shards of "
              f"{args.side}-px JPEGs (made in {time.monotonic() - started:.0f} s)")
        show("this tree", build(src, run))
        show("this tree, rebuilt", build(src, run))
        show("this tree, --groups 100", build(src, run, "100"))
        build(src, run)  # the whole report again, to open
        opened = open_in_browser(os.path.join(run, "report", "index.html"), os.path.join(root, "profile"))
        print(f"{'opened in a browser':28s} {opened}")
        if args.compare_src:
            shutil.rmtree(os.path.join(run, "report"))
            show(f"{args.compare_src}", build(args.compare_src, run))
    finally:
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

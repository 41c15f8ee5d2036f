"""One command of the CLI, run by two source trees of imagesieve in turn (A B A B ...), timed from outside:
whole-process wall and CPU seconds (user + system of the command and every process it waited for) and
the ratio A/B taken pair by pair, so that a machine whose speed drifts still gives a fair ratio.

For "keeps its speed" claims: the tree of today against the tree of an earlier commit, on the same data,
cores and interpreter (`git worktree add /tmp/old <commit>`). Each run writes into a fresh OUT, deleted
before the run starts (outside the timing).

    python benchmarks/bench_versions.py --a src --b /tmp/old/src --runs 7 -- \
        remove --quiet --duplicates IDS SHARDS {out}
    python benchmarks/bench_versions.py --a src --b /tmp/old/src --runs 3 -- find --quiet SHARDS {out}

`{out}` stands for the output folder of each run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def timed(tree: str, args: list[str], out: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `python -m imagesieve ARGS` with `tree` on PYTHONPATH."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    command = [sys.executable, "-m", "imagesieve.cli", *(a.replace("{out}", out) for a in args)]
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="the source tree measured (its src/ folder)")
    parser.add_argument("--b", required=True, help="the source tree it is compared with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    work = tempfile.mkdtemp(prefix="bench_versions-")
    try:
        rows: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
        for k in range(args.warmup + args.runs):
            for name, tree in (("A", args.a), ("B", args.b)):
                result = timed(tree, command, os.path.join(work, f"out-{name}"))
                if k >= args.warmup:
                    rows[name].append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"command: imagesieve {' '.join(command)}\nA = {args.a}\nB = {args.b}\nruns: {args.runs} each, in turn")
    print(f"{'':8}{'wall s (median)':>18}{'cpu s (median)':>18}")
    for name, values in rows.items():
        print(f"{name:8}{statistics.median(w for w, _ in values):18.3f}{statistics.median(c for _, c in values):18.3f}")
    wall = [a[0] / b[0] for a, b in zip(rows["A"], rows["B"], strict=True)]
    cpu = [a[1] / b[1] for a, b in zip(rows["A"], rows["B"], strict=True)]
    print(f"{'A/B':8}{statistics.median(wall):18.3f}{statistics.median(cpu):18.3f}   (pair by pair; "
          f"wall range {min(wall):.3f}-{max(wall):.3f})")


if __name__ == "__main__":
    main()

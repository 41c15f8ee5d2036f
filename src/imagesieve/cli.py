"""The `imagesieve` command line. The only module that reads the environment.

Exit codes: 0 done, 1 an error (one line saying why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from imagesieve.executors.base import BaseExecutor


def make_executor(args: argparse.Namespace) -> BaseExecutor:
    if getattr(args, "executor", "local") == "ray":
        from imagesieve.executors.ray import RayExecutor

        return RayExecutor(address=args.ray_address or os.environ.get("RAY_ADDRESS"), num_cpus=args.workers)
    from imagesieve.executors.local import LocalExecutor

    return LocalExecutor(num_workers=args.workers)


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None,
                        help="processes on this machine (default: all cores); with --executor ray and no "
                             "cluster address, the CPUs of the local Ray instance")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="run on this machine (local) or on a Ray cluster (ray)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a "
                        "new local cluster)")


def cmd_remove(args: argparse.Namespace) -> int:
    from imagesieve.workflows.remove import remove_duplicates

    summary = remove_duplicates(args.input, args.output, args.duplicates, id_field=args.id_field,
                                executor=make_executor(args), progress=not args.quiet, fsync=args.fsync)
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    print("\n".join(summary.lines()))
    print(f"output           {args.output} (removed list: {os.path.join(args.output, 'removed.parquet')})")
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from imagesieve.sample_data import make_sample_dataset

    started = time.monotonic()
    counts = make_sample_dataset(args.output, shard_size=args.shard_size)
    print(f"wrote {counts['samples']} samples ({counts['originals']} originals, {counts['duplicates']} planted "
          f"duplicates) in {counts['shards']} shards to {os.path.join(args.output, 'shards')} "
          f"in {time.monotonic() - started:.1f} s")
    print(f"planted duplicate IDs: {os.path.join(args.output, 'planted')}  truth: "
          f"{os.path.join(args.output, 'truth.parquet')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from imagesieve.report import write_report

    print(f"wrote {write_report(args.run_dir, max_groups=args.groups)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagesieve", description="Find and remove duplicate images in "
                                     "WebDataset shards.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    remove = sub.add_parser("remove", help="copy shards without the samples whose IDs are listed in Parquet files")
    remove.add_argument("--duplicates", required=True, metavar="DIR",
                        help="folder of Parquet files listing the IDs to remove (searched recursively)")
    remove.add_argument("--id-field", default="id", help="column holding the IDs (default: id)")
    remove.add_argument("--quiet", action="store_true", help="no progress bar")
    remove.add_argument("--fsync", action="store_true", help="force each output shard to disk before it is "
                        "renamed into place (survives power loss; slower)")
    add_executor_args(remove)
    remove.add_argument("input", help="folder or glob of tar shards")
    remove.add_argument("output", help="folder for the output shards (created)")
    remove.set_defaults(func=cmd_remove)

    from imagesieve.cli_find import add_find_command

    add_find_command(sub, add_executor_args, make_executor)

    report = sub.add_parser("report", help="an HTML page of the duplicate groups of a `find` run, with thumbnails")
    report.add_argument("--groups", type=int, default=200, help="show at most this many groups, largest first")
    report.add_argument("run_dir", help="the OUT folder of `imagesieve find`")
    report.set_defaults(func=cmd_report)

    sample = sub.add_parser("sample-data", help="write a small dataset of real photos with planted duplicates")
    sample.add_argument("--shard-size", type=int, default=100)
    sample.add_argument("output")
    sample.set_defaults(func=cmd_sample_data)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("imagesieve: interrupted; finished shards are kept, rerun to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; -v shows the traceback
        if args.verbose:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if getattr(exc, "imagesieve_context", None):  # raised in a stage: say what it was, and where
            message = f"{type(exc).__name__}: {message}"
        print(f"imagesieve: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

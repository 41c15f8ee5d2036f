"""The `imagesieve` command line (`main`). The only package that reads the environment.

Exit codes: 0 done, 1 an error (one line saying why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from imagesieve.cli.storage import add_storage_args, storage_options
from imagesieve.util.cache_dir import default_cache_dir

if TYPE_CHECKING:  # the command line imports the heavy modules only once it runs, under its Ctrl-C handler
    from imagesieve.executors.base import BaseExecutor


def make_executor(args: argparse.Namespace) -> BaseExecutor:
    if args.ray_address and args.executor != "ray":  # never a run on this machine when a cluster was named
        print(f"imagesieve: --ray-address {args.ray_address} needs --executor ray", file=sys.stderr)
        raise SystemExit(2)
    if args.executor == "ray":
        from imagesieve.executors.ray import RayExecutor

        return RayExecutor(address=args.ray_address or os.environ.get("RAY_ADDRESS"), num_cpus=args.workers)
    from imagesieve.executors.local import LocalExecutor

    return LocalExecutor(num_workers=args.workers)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes on this machine (default: all cores); with --executor ray and no "
                             "cluster address, the CPUs of the local Ray instance")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="run on this machine (local) or on a Ray cluster (ray)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a "
                        "new local cluster)")


def cmd_remove(args: argparse.Namespace) -> int:
    from imagesieve.workflows.remove import remove_duplicates

    summary = remove_duplicates(args.input, args.output, args.duplicates, id_field=args.id_field,
                                executor=make_executor(args), progress=not args.quiet, fsync=args.fsync,
                                cache_dir=args.cache_dir, check_id_folder=not args.any_id_folder, link=args.link,
                                storage_options=storage_options(args), id_scheme=args.id_scheme,
                                allow_unmatched_ids=args.allow_unmatched_ids)
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    from imagesieve.cli.options import print_summary

    print_summary(args, summary, [f"output           {args.output} (removed list: "
                                  f"{os.path.join(args.output, 'removed.parquet')})"])
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from imagesieve.workflows.sample_data import make_sample_dataset

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

    index = write_report(args.run_dir, max_groups=args.groups, executor=make_executor(args),
                         storage_options=storage_options(args))
    print(f"wrote {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagesieve", description="Find and remove duplicate images in "
                                     "WebDataset shards.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--version", action=VersionAction, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    remove = sub.add_parser("remove", help="copy shards without the samples whose IDs are listed in Parquet files",
                            epilog="example:\n  imagesieve remove --duplicates found/duplicates shards/ clean/",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    remove.add_argument("--duplicates", required=True, metavar="DIR",
                        help="folder of Parquet files listing the IDs to remove (searched recursively)")
    remove.add_argument("--id-field", default="id", help="column holding the IDs (default: id)")
    remove.add_argument("--id-scheme", choices=["auto", "key", "curator"], default="auto",
                        help="what the IDs name: sample keys (key), NeMo Curator reader IDs {tar stem}_{index:06d}, "
                             "mapped by shard and position (curator), or decided from the list and the input "
                             "(auto, the default)")
    remove.add_argument("--allow-unmatched-ids", action="store_true",
                        help="accept a list of which no ID names a sample of the input (a run over part of the "
                             "shards the list was made for); refused by default")
    remove.add_argument("--quiet", action="store_true", help="no progress output")
    remove.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    remove.add_argument("--cache-dir", default=default_cache_dir(), metavar="DIR",
                        help="where built ID indexes are kept for reuse (private to you; the 8 most recently used "
                             "are kept; safe to delete). Default: $IMAGESIEVE_CACHE_DIR, $XDG_CACHE_HOME/imagesieve "
                             "or ~/.cache/imagesieve")
    remove.add_argument("--any-id-folder", action="store_true",
                        help="accept an ID folder that looks like a find output root, a groups table or a hash "
                             "table (refused by default: those list images that must stay)")
    remove.add_argument("--link", action="store_true",
                        help="image folders: hard-link kept files instead of copying them (same file system)")
    remove.add_argument("--fsync", action="store_true", help="force each output shard to disk before it is "
                        "renamed into place (survives power loss; slower)")
    add_executor_args(remove)
    add_storage_args(remove)
    remove.add_argument("input", help="tar shards (folder, glob, brace pattern, list file, s3:// or gs:// URL) "
                        "or a folder of images")
    remove.add_argument("output", help="folder (or s3:// / gs:// prefix) for the output shards (created)")
    remove.set_defaults(func=cmd_remove)

    from imagesieve.cli.find import add_find_command

    add_find_command(sub, add_executor_args, make_executor, default_cache_dir())

    report = sub.add_parser("report", help="a static HTML report of the duplicate groups of a `find` or `dedup` "
                            "run, with thumbnails", epilog="example:\n  imagesieve report found/   "
                            "# writes found/report/index.html", formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("--groups", type=positive_int, default=None,
                        help="show only this many groups, largest first (default: all)")
    add_executor_args(report)
    add_storage_args(report)
    report.add_argument("run_dir", help="the OUT folder of `imagesieve find` or `imagesieve dedup`")
    report.set_defaults(func=cmd_report)

    sample = sub.add_parser("sample-data", help="write a small dataset of real photos with planted duplicates",
                            epilog="example:\n  imagesieve sample-data demo && imagesieve dedup demo/shards demo/out",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sample.add_argument("--shard-size", type=positive_int, default=100, help="samples per shard")
    sample.add_argument("output")
    sample.set_defaults(func=cmd_sample_data)

    return parser


class VersionAction(argparse.Action):
    """`--version`, looked up only when asked: importlib.metadata costs every command ~25 ms."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: object, values: object, option: object = None):
        print(f"imagesieve {package_version()}")
        parser.exit()


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagesieve")
    except PackageNotFoundError:
        return "unknown"


class _NoPandas:
    """A meta path finder under which `import pandas` fails."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] == "pandas":
            raise ImportError("pandas is not imported during imagesieve's start-up")


def skip_pyarrow_pandas_probe() -> None:
    """pyarrow imports pandas (~0.2 s, a tenth of a small `find`) the first time it asks whether an
    input is a pandas object; imagesieve never gives it one. Let that first probe find no pandas:
    pyarrow then stops asking, and still imports pandas if something calls `to_pandas()`. Only for
    this process (the command line, and the workers it forks), not for library users."""
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


def freeze_start_up_objects() -> None:
    """Put every object made so far (the imported modules' classes, functions and constants, some
    hundreds of thousands) out of the garbage collector's reach: they live as long as the process,
    yet every full collection would walk them again, in this process and in each worker it forks,
    and so would the interpreter's last collection at exit (~25 ms of every command). Only for the
    command line's processes, like `skip_pyarrow_pandas_probe`."""
    gc.freeze()


def one_blas_thread() -> None:
    """Unless the user says otherwise, NumPy's OpenBLAS gets one thread: its extra threads spin at start-up
    (~0.1 s of CPU on 2 cores) and help no job here, which the executor already runs one per core. Set
    before NumPy is first imported (by `build_parser`); inherited by the workers."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def interrupted(message: str) -> int:
    """Ctrl-C: say so, and let no second one cut the shutdown short (workers are being stopped)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(message, file=sys.stderr)
    return 130


PATH_ARGUMENTS = ("input", "output", "duplicates", "reference", "embeddings", "model", "removed_path", "cache_dir",
                  "run_dir")


def given_paths(args: argparse.Namespace) -> None:
    """Every path argument as the code reads it (`storage.as_given`: `file://` URLs made local paths)."""
    from imagesieve.storage import as_given

    for name in PATH_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, as_given(value))
        elif isinstance(value, list):
            setattr(args, name, [as_given(v) for v in value])


def main(argv: list[str] | None = None) -> int:
    one_blas_thread()
    try:
        args = build_parser().parse_args(argv)  # imports the workflows: Ctrl-C may come here already
        skip_pyarrow_pandas_probe()
        freeze_start_up_objects()
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    except KeyboardInterrupt:
        return interrupted("imagesieve: interrupted")
    try:
        given_paths(args)
        return args.func(args)
    except KeyboardInterrupt:
        return interrupted("imagesieve: interrupted; finished shards are kept, rerun to resume")
    except BrokenPipeError:  # `imagesieve ... | head`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 0
    except Exception as exc:  # one line for the user; -v shows the traceback
        if args.verbose:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if getattr(exc, "imagesieve_context", None):  # raised in a stage: say what it was, and where
            message = f"{type(exc).__name__}: {message}"
        print(f"imagesieve: error: {message}", file=sys.stderr)
        return 1


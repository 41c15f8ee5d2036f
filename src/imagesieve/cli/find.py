"""The `find` and `dedup` commands: list duplicates (and their groups), and the one-shot run."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from imagesieve.cli.copy import add_copy_args, cmd_find_copy, copy_config
from imagesieve.cli.options import ALONE, check_method_options, option, print_find_summary, print_summary
from imagesieve.cli.semantic import add_semantic_args, cmd_find_semantic, semantic_config
from imagesieve.cli.storage import add_storage_args, storage_options
from imagesieve.workflows.find import DEFAULT_CONFIRM, DEFAULT_THRESHOLDS, MAX_CONFIRM, METHODS, FindConfig

FIND_EXAMPLE = """example:
  imagesieve find --method phash --threshold 10 shards/ found/
  imagesieve remove --duplicates found/duplicates shards/ clean/"""

DEDUP_EXAMPLE = """examples:
  imagesieve dedup shards/ out/                      # exact + pHash, then out/shards, out/report/index.html
  imagesieve dedup --dry-run shards/ out/            # everything but the shards: look at the report first
  imagesieve dedup --reference test-set/ train/ out/ # drop training images that copy test images"""


def parse_method(text: str) -> str:
    """`exact`, one perceptual hash, `exact,<hash>` (exact copies are always grouped first), `semantic` or
    `copy`."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in (*METHODS, *ALONE)]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(unknown) or text!r}; choose from "
                                         f"{', '.join((*METHODS, *ALONE))}")
    for alone in ALONE:
        if alone in methods:
            if len(methods) > 1:
                raise argparse.ArgumentTypeError(f"{alone} runs alone (combining it with hashes is not supported "
                                                 "yet)")
            return alone
    perceptual = [m for m in methods if m != "exact"]
    if len(perceptual) > 1:
        raise argparse.ArgumentTypeError(f"one perceptual hash at a time, got {', '.join(perceptual)}")
    return perceptual[0] if perceptual else "exact"


def parse_confirm(text: str) -> bool | int:
    """`off` or a number of bits, 0..MAX_CONFIRM."""
    if text.strip().lower() == "off":
        return False
    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bits (0..{MAX_CONFIRM}) or 'off', got {text!r}") \
            from None
    if not 0 <= bits <= MAX_CONFIRM:
        raise argparse.ArgumentTypeError(f"expected 0..{MAX_CONFIRM} bits (pHash and both dHashes together), "
                                         f"got {bits}")
    return bits


def find_config(args: argparse.Namespace) -> FindConfig:
    return FindConfig(method=args.method, threshold=option(args, "threshold"), keep=args.keep,
                      chaining=option(args, "chaining"), flip=option(args, "flip"), on_error=args.on_error,
                      exact_decode=option(args, "exact_decode"), confirm=option(args, "confirm"))


def cmd_find(args: argparse.Namespace, make_executor: Callable) -> int:
    from imagesieve.workflows.find import find_duplicates

    check_method_options(args)
    if args.method == "semantic":
        return cmd_find_semantic(args, make_executor)
    if args.method == "copy":
        return cmd_find_copy(args, make_executor)
    summary = find_duplicates(args.input, args.output, find_config(args), reference=option(args, "reference"),
                              executor=make_executor(args), progress=not args.quiet,
                              storage_options=storage_options(args))
    print_find_summary(args, summary)
    return 0


def cmd_dedup(args: argparse.Namespace, make_executor: Callable) -> int:
    from imagesieve.workflows.dedup import dedup

    check_method_options(args)
    configs = {"semantic": semantic_config, "copy": copy_config}
    config = configs.get(args.method, find_config)(args)
    summary = dedup(args.input, args.output, config, reference=option(args, "reference"),
                    executor=make_executor(args), progress=not args.quiet, dry_run=args.dry_run,
                    cache_dir=args.cache_dir, link=args.link, storage_options=storage_options(args))
    print_summary(args, summary, [])
    return 0


def add_find_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", type=parse_method, default="phash",
                        help="exact: same bytes or same pixels; phash/dhash/ahash/whash: perceptual, exact copies "
                             "included (default phash; 'exact,phash' means the same); semantic: image embeddings")
    parser.add_argument("--threshold", type=int, default=argparse.SUPPRESS,
                        help=f"max Hamming distance of 64 bits, 0..32 (defaults: {DEFAULT_THRESHOLDS})")
    parser.add_argument("--confirm", type=parse_confirm, default=argparse.SUPPRESS, metavar="BITS|off",
                        help=f"pHash: a pair within --threshold counts only when pHash and the dHashes of rows and "
                             f"columns together differ in at most BITS of their {MAX_CONFIRM} "
                             f"(default {DEFAULT_CONFIRM}): "
                             "unrelated images stay apart at millions of images; off: every pair within --threshold "
                             "counts")
    parser.add_argument("--keep", default="first",
                        help="which member of a group stays: first, resolution, file-size, or column:NAME "
                             "(a number in the sample's .json, larger kept)")
    parser.add_argument("--chaining", action="store_true", default=argparse.SUPPRESS,
                        help="group by connected components (a~b~c is one group even if a and c differ more)")
    parser.add_argument("--flip", action="store_true", default=argparse.SUPPRESS,
                        help="also match horizontally mirrored copies")
    parser.add_argument("--reference", default=argparse.SUPPRESS, metavar="SHARDS",
                        help="only mark INPUT images that match an image of these shards (never removed)")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                        help="an unreadable image stops the run (fail) or is listed in skipped.parquet (skip)")
    parser.add_argument("--exact-decode", action="store_true", default=argparse.SUPPRESS,
                        help="decode JPEGs at full size (hashes equal imagehash's bit for bit; slower)")
    add_semantic_args(parser)
    add_copy_args(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")


def add_find_command(sub: argparse._SubParsersAction, add_executor_args: Callable, make_executor: Callable,
                     default_cache_dir: str) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    find = sub.add_parser("find", help="find exact and near-duplicate images; write their IDs for `remove`",
                          epilog=FIND_EXAMPLE, formatter_class=raw)
    add_find_options(find)
    add_executor_args(find)
    add_storage_args(find)
    find.add_argument("input", help="tar shards (folder, glob, brace pattern, list file) or a folder of images")
    find.add_argument("output", help="folder for hashes, duplicates/ and groups/")
    find.set_defaults(func=lambda args: cmd_find(args, make_executor))

    dedup = sub.add_parser("dedup", help="find, remove and report in one run: shards in, clean shards out",
                           epilog=DEDUP_EXAMPLE, formatter_class=raw)
    add_find_options(dedup)
    dedup.add_argument("--dry-run", action="store_true",
                       help="write everything but the shards (duplicates, groups, report), to check first")
    dedup.add_argument("--link", action="store_true",
                       help="image folders: hard-link kept files instead of copying them (same file system)")
    dedup.add_argument("--cache-dir", default=default_cache_dir, metavar="DIR",
                       help="where built ID indexes are kept for reuse (see `imagesieve remove --help`)")
    add_executor_args(dedup)
    add_storage_args(dedup)
    dedup.add_argument("input", help="tar shards (folder, glob, brace pattern, list file) or a folder of images")
    dedup.add_argument("output", help="folder for shards/, duplicates/, groups/, report/, removed.parquet")
    dedup.set_defaults(func=lambda args: cmd_dedup(args, make_executor))

"""The `find` command: list duplicates (and their groups) for `remove`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from imagesieve.cli_semantic import add_semantic_args, cmd_find_semantic
from imagesieve.workflows.find import DEFAULT_THRESHOLDS, METHODS, FindConfig, find_duplicates


def cmd_find(args: argparse.Namespace, make_executor: Callable) -> int:
    if args.method == "semantic":
        return cmd_find_semantic(args, make_executor)
    config = FindConfig(method=args.method, threshold=args.threshold, keep=args.keep, chaining=args.chaining,
                        flip=args.flip, on_error=args.on_error, exact_decode=args.exact_decode,
                        json_fields=tuple([args.keep.split(":", 1)[1]] if args.keep.startswith("column:") else []))
    summary = find_duplicates(args.input, args.output, config, reference=args.reference,
                              executor=make_executor(args), progress=not args.quiet)
    print("\n".join(summary.lines()))
    print(f"duplicate IDs    {os.path.join(args.output, 'duplicates')}  (imagesieve remove --duplicates ...)")
    print(f"to look at them  imagesieve report {args.output}")
    return 0


def add_find_command(sub: argparse._SubParsersAction, add_executor_args: Callable, make_executor: Callable) -> None:
    find = sub.add_parser("find", help="find exact and near-duplicate images; write their IDs for `remove`")
    find.add_argument("--method", choices=[*METHODS, "semantic"], default="phash",
                      help="exact: same bytes or same pixels; phash/dhash/ahash/whash: perceptual (default phash); "
                           "semantic: image embeddings, k-means and cosine similarity")
    find.add_argument("--threshold", type=int, default=None,
                      help=f"max Hamming distance of 64 bits (defaults: {DEFAULT_THRESHOLDS})")
    find.add_argument("--keep", default="first",
                      help="which member of a group stays: first, resolution, file-size, or column:NAME "
                           "(a number in the sample's .json, larger kept)")
    find.add_argument("--chaining", action="store_true",
                      help="group by connected components (a~b~c is one group even if a and c differ more)")
    find.add_argument("--flip", action="store_true", help="also match horizontally mirrored copies")
    find.add_argument("--reference", default=None, metavar="SHARDS",
                      help="only mark INPUT images that match an image of these shards (never removed)")
    find.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                      help="an unreadable image stops the run (fail) or is listed in skipped.parquet (skip)")
    find.add_argument("--exact-decode", action="store_true",
                      help="decode JPEGs at full size (hashes equal imagehash's bit for bit; slower)")
    add_semantic_args(find)
    find.add_argument("--quiet", action="store_true", help="no progress output")
    add_executor_args(find)
    find.add_argument("input", help="folder or glob of tar shards")
    find.add_argument("output", help="folder for hashes, duplicates/ and groups/")
    find.set_defaults(func=lambda args: cmd_find(args, make_executor))

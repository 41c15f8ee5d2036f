"""The options of `find --method copy`, kept beside `cli/find.py` so that the two change apart."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from imagesieve.workflows.copy_find import CopyConfig

DEFAULTS = CopyConfig()


def add_copy_args(find: argparse.ArgumentParser) -> None:
    group = find.add_argument_group("--method copy")
    group.add_argument("--neighbours", type=int, default=argparse.SUPPRESS, metavar="K",
                       help=f"candidates: each image's K nearest images by embedding (default {DEFAULTS.neighbours})")
    group.add_argument("--min-similarity", type=float, default=argparse.SUPPRESS,
                       help=f"candidates: ... with cosine similarity at least this (default {DEFAULTS.min_similarity})")
    group.add_argument("--hash-threshold", type=int, default=argparse.SUPPRESS,
                       help="candidates: also every pair within this many bits of pHash, mirror included "
                            f"(default {DEFAULTS.hash_threshold})")
    group.add_argument("--min-inliers", type=int, default=argparse.SUPPRESS,
                       help=f"a copy: at least this many keypoints agree on one transform (default "
                            f"{DEFAULTS.min_inliers})")
    group.add_argument("--min-coverage", type=float, default=argparse.SUPPRESS,
                       help="... and they cover at least this share of each image's area "
                            f"(default {DEFAULTS.min_coverage})")
    group.add_argument("--min-agreement", type=float, default=argparse.SUPPRESS,
                       help="... and, aligned by that transform, the pixels agree over at least this share of "
                            f"one of the two images (default {DEFAULTS.min_agreement})")
    group.add_argument("--features", type=int, default=argparse.SUPPRESS,
                       help=f"verification: at most this many keypoints per image, strongest first (default "
                            f"{DEFAULTS.features})")
    group.add_argument("--hash-accept", type=int, default=argparse.SUPPRESS,
                       help="pairs within this pHash distance are copies without keypoint evidence "
                            f"(default {DEFAULTS.hash_accept}; -1: never); --method semantic: see --hash-eps")


def copy_config(args: argparse.Namespace) -> CopyConfig:
    from imagesieve.cli.options import option

    tuning = {name: getattr(args, name, getattr(DEFAULTS, name)) for name in (
        "neighbours", "min_similarity", "hash_threshold", "min_inliers", "min_coverage", "min_agreement", "hash_accept",
        "features")}
    return CopyConfig(**tuning, keep=args.keep, clusters=option(args, "clusters"), model=option(args, "model"),
                      model_inference_batch_size=option(args, "embedding_batch_size"), on_error=args.on_error)


def cmd_find_copy(args: argparse.Namespace, make_executor: Callable) -> int:
    from imagesieve.cli.options import print_find_summary
    from imagesieve.workflows.copy_find import find_copies

    summary = find_copies(args.input, args.output, copy_config(args), executor=make_executor(args),
                          progress=not args.quiet)
    print_find_summary(args, summary)
    return 0

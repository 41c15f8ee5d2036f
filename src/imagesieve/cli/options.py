"""What the `find` and `dedup` commands and their method modules share: which options belong to which
method, and how a summary is printed. Kept apart so that `find`, `semantic` and `copy`
import it, not each other."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from imagesieve.storage import join
from imagesieve.workflows.find import METHODS

ALONE = ("semantic", "copy")  # methods that take no other method beside them
HASHES = frozenset(METHODS)
PERCEPTUAL = HASHES - {"exact"}  # exact copies have no distance: no threshold, nothing to chain
# options that mean something to some methods only (parsed with no default: present only when given)
METHOD_OPTIONS: dict[str, tuple[frozenset[str], object]] = {
    "threshold": (PERCEPTUAL, None), "chaining": (PERCEPTUAL, False), "reference": (HASHES, None),
    "confirm": (frozenset({"phash", "semantic"}), True),
    "hash_eps": (frozenset({"semantic"}), None), "eps_hash_bits": (frozenset({"semantic"}), None),
    "hash_accept": (frozenset({"copy", "semantic"}), None),
    "exact_decode": (HASHES, False), "flip": (HASHES - {"exact"} | {"semantic"}, False),
    "eps": (frozenset({"semantic"}), None), "embeddings": (frozenset({"semantic"}), None),
    "embeddings_key": (frozenset({"semantic"}), None),
    "clusters": (frozenset(ALONE), None), "model": (frozenset(ALONE), "default"),
    "embedding_batch_size": (frozenset(ALONE), 32),
    **{name: (frozenset({"copy"}), None) for name in ("neighbours", "min_similarity", "hash_threshold", "min_inliers",
                                                       "min_coverage", "min_agreement", "features")},
}


def option(args: argparse.Namespace, name: str) -> object:
    """A method's option as given, or its default."""
    return getattr(args, name, METHOD_OPTIONS[name][1])


def check_method_options(args: argparse.Namespace) -> None:
    """An option of another method is an error, never silently ignored (`--eps` without `--method
    semantic` would run pHash and exit 0)."""
    wrong = [name for name, (methods, _) in METHOD_OPTIONS.items()
             if hasattr(args, name) and args.method not in methods]
    if not wrong and hasattr(args, "embeddings_key") and not hasattr(args, "embeddings"):
        print("imagesieve: --embeddings-key names a column of the --embeddings folder's metadata; give "
              "--embeddings too", file=sys.stderr)
        raise SystemExit(2)
    if wrong:
        flags = ", ".join("--" + name.replace("_", "-") for name in wrong)
        owners = sorted({"/".join(METHODS) if METHOD_OPTIONS[name][0] == HASHES else m for name in wrong
                         for m in METHOD_OPTIONS[name][0]})
        print(f"imagesieve: {flags} does not apply to --method {args.method} (it belongs to --method "
              f"{' or '.join(owners)})", file=sys.stderr)
        raise SystemExit(2)
def print_summary(args: argparse.Namespace, summary: object, extra_lines: list[str]) -> None:
    """The summary table, or with --json one JSON object on stdout (and nothing else there)."""
    if args.json:
        print(json.dumps(asdict(summary), sort_keys=True))
    else:
        print("\n".join([*summary.lines(), *extra_lines]))


def print_find_summary(args: argparse.Namespace, summary: object) -> None:
    """A find's summary, and where its results are and what to do with them next."""
    print_summary(args, summary, [
        f"duplicate IDs    {join(args.output, 'duplicates')}  (imagesieve remove --duplicates ...)",
        f"to look at them  imagesieve report {args.output}"])

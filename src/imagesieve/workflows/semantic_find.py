"""`find --method semantic`: embed the input shards (or take precomputed embeddings), then run
`SemanticDeduplicationWorkflow` into the same output layout as the other finders. Where it embeds the
images with the default model it also hashes them (pHash), and a pHash match whose embeddings are close
enough is a duplicate too (see `DEFAULT_HASH_ACCEPT`): exact, recompressed and resized copies are found
as `find --method phash` finds them, without its false matches between look-alike textures.

OUT/embeddings/<shard>.parquet   id, embeddings, ... per shard; reused by reruns while the shard and
                                 the model are unchanged (see `embedding_writer.is_current`)
OUT/hashes/<shard>.parquet       pHash per image (as `find --method phash` writes it), also reused
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.embeddings_io import (
    EmbeddingsError,
    NpyPart,
    default_id_field,
    embedding_sources,
    parquet_columns,
)
from imagesieve.matching.keep import keep_policy
from imagesieve.pipeline.inputs import InputUnit, input_files_and_folders, input_units
from imagesieve.progress import phase
from imagesieve.stages.embedding import EmbeddingWriterStage, ImageEmbeddingStage
from imagesieve.stages.embedding.clip_model import clip_folder, clip_identity, is_clip_folder
from imagesieve.stages.embedding.embedding_writer import embedding_table_path, is_current
from imagesieve.stages.embedding.onnx_model import DEFAULT_MODEL, OPEN_NSFW, check_model, model_identity
from imagesieve.stages.sample_fields import check_on_error
from imagesieve.storage import as_given, on_local_file_system
from imagesieve.storage.runfolder import narrow_to_files, remove_stale_temp_files
from imagesieve.tar.read import ShardReader, iter_samples
from imagesieve.workflows.common import absolute_paths, given_paths, reader_for, run_in_locked_folder, run_on_units
from imagesieve.workflows.find import (
    CONFIRMED_BY,
    MAX_THRESHOLD,
    FindConfig,
    hash_shards,
    load_hashes,
    near_edges,
    split_readable,
)
from imagesieve.workflows.semantic import (
    ExtraPairs,
    HashCheck,
    SemanticDeduplicationWorkflow,
    SemanticSummary,
)

# The default model's recipe and the finder's defaults, chosen on one half of the labelled real photos
# (split by source photo) and scored on the other (`benchmarks/bench_semantic.py quality`, BENCHMARKS.md):
# the model sees a 48-pixel thumbnail at INPUT_SIZE pixels (224 before issue 25: 11x the work, no better);
# a pair is a duplicate when its cosine distance is within eps and its pHash distance within
# DEFAULT_EPS_HASH_BITS, or when its pHash distance is within DEFAULT_HASH_ACCEPT bits and its cosine
# distance within DEFAULT_HASH_EPS; either way its pHash and both dHashes must together differ in at most
# DEFAULT_CONFIRM of their 192 bits (same bytes: always a duplicate). The embeddings veto the pHash
# matches of look-alike textures; the hashes veto the embeddings' matches of smooth skies and repeated
# textures (whose hashes are noise), and pHash finds the recompressed and resized copies that the
# embeddings put a little too far apart
THUMBNAIL = OPEN_NSFW.thumbnail  # 48 pixels
INPUT_SIZE = 64
DEFAULT_EPS = 0.05
DEFAULT_EPS_HASH_BITS = 28
DEFAULT_HASH_ACCEPT = 16
DEFAULT_HASH_EPS = 0.2
DEFAULT_CONFIRM = 48
# with --flip (mirror-invariant embeddings, pHash's and dHashes' mirrors too): no setting met the rule's
# floors on the tuning half, so the rule's fallback, the most precise setting
DEFAULT_EPS_FLIP = 0.02
DEFAULT_EPS_HASH_BITS_FLIP = 16
DEFAULT_HASH_ACCEPT_FLIP = 10
DEFAULT_HASH_EPS_FLIP = 0.1
DEFAULT_CONFIRM_FLIP = 40
MAX_CONFIRM = 192  # the bits of pHash and both dHashes
CURATOR_FIELDS = ("image_id", "embedding")  # what Curator's image embedding pipeline writes


@dataclass(frozen=True)
class SemanticConfig:
    eps: float | None = None  # None: DEFAULT_EPS, or DEFAULT_EPS_FLIP with flip
    n_clusters: int | None = None
    keep: str = "first"
    model: str = DEFAULT_MODEL  # or the path of an ONNX file, or a CLIP folder (Curator's model_dir)
    embeddings: str | None = None  # precomputed embeddings (Parquet, or a clip-retrieval folder) instead of a model
    embeddings_key: str | None = None  # a clip-retrieval folder's ID column (default `key`)
    model_inference_batch_size: int = 32
    on_error: str = "fail"
    json_fields: tuple[str, ...] = ()
    flip: bool = False  # mirror-invariant embeddings: a mirrored copy is a duplicate
    # pHash pairs within this many bits (mirror included with flip) whose cosine distance is within hash_eps
    # are duplicates too; -1: embeddings alone. Only where the default model embeds the images. None: the
    # defaults (DEFAULT_HASH_ACCEPT / _EPS, or their _FLIP values with flip)
    hash_accept: int | None = None
    hash_eps: float | None = None
    # where pHash is computed (see with_hashes): an embedding pair counts only when its pHash distance is
    # within eps_hash_bits too (64: any), and every pair (but exact copies) only when its pHash and both
    # dHashes together differ in at most `confirm` bits (192: any). None: the defaults (DEFAULT_EPS_HASH_BITS
    # / DEFAULT_CONFIRM, or their _FLIP values with flip)
    eps_hash_bits: int | None = None
    confirm: int | None = None
    random_state: int = 42
    max_iter: int = 10

    def __post_init__(self) -> None:
        """Every setting checked before any work (a bad --eps was refused only after embedding every image)."""
        if self.eps is not None and not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1) (a cosine distance), got {self.eps}")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ValueError(f"n_clusters must be 1 or more, got {self.n_clusters}")
        if not -1 <= self.hash_bits <= MAX_THRESHOLD or not 0 <= self.hash_distance <= 2:
            raise ValueError(f"hash_accept must be in -1..{MAX_THRESHOLD} bits and hash_eps in [0, 2], got "
                             f"{self.hash_accept} and {self.hash_eps}")
        if not 0 <= self.eps_hash_limit <= 64 or not 0 <= self.confirm_bits <= MAX_CONFIRM:
            raise ValueError(f"eps_hash_bits must be in 0..64 and confirm in 0..{MAX_CONFIRM} bits, got "
                             f"{self.eps_hash_bits} and {self.confirm}")
        if self.model_inference_batch_size < 1:
            raise ValueError(f"model_inference_batch_size must be 1 or more, got {self.model_inference_batch_size}")
        keep_policy(self.keep, centroids=True)  # validates
        check_on_error(self.on_error)
        if self.embeddings is None:
            check_model_option(self.model)

    @property
    def with_hashes(self) -> bool:
        """pHash pairs are added where the images are embedded by the default model."""
        return self.hash_bits >= 0 and self.embeddings is None and self.model == DEFAULT_MODEL

    @property
    def hash_bits(self) -> int:
        if self.hash_accept is not None:
            return self.hash_accept
        return DEFAULT_HASH_ACCEPT_FLIP if self.flip else DEFAULT_HASH_ACCEPT

    @property
    def hash_distance(self) -> float:
        if self.hash_eps is not None:
            return self.hash_eps
        return DEFAULT_HASH_EPS_FLIP if self.flip else DEFAULT_HASH_EPS

    @property
    def eps_hash_limit(self) -> int:
        if self.eps_hash_bits is not None:
            return self.eps_hash_bits
        return DEFAULT_EPS_HASH_BITS_FLIP if self.flip else DEFAULT_EPS_HASH_BITS

    @property
    def confirm_bits(self) -> int:
        if self.confirm is not None:
            return self.confirm
        return DEFAULT_CONFIRM_FLIP if self.flip else DEFAULT_CONFIRM

    @property
    def threshold(self) -> float:
        if self.eps is not None:
            return self.eps
        return DEFAULT_EPS_FLIP if self.flip else DEFAULT_EPS


def check_model_option(model: str) -> None:
    """A model that cannot be used is refused here, naming it, before any work: a folder must hold a CLIP
    model (its config is read; torch loads the weights in the workers); an ONNX file is loaded once
    (`check_model`)."""
    if model != DEFAULT_MODEL and os.path.isdir(model):
        clip_folder(model)
    else:
        check_model(model)


def refuse_object_storage(input_path: str | list[str], output_dir: str, method: str = "semantic") -> None:
    sources = [input_path] if isinstance(input_path, str) else list(input_path)
    if not all(on_local_file_system(p) for p in [*sources, output_dir]):
        raise ValueError(f"--method {method} does not read or write object storage yet; use local (or mounted) "
                         "input and output")


def find_semantic(input_path: str | list[str], output_dir: str, config: SemanticConfig = SemanticConfig(),
                  executor: BaseExecutor | None = None, progress: bool = False) -> SemanticSummary:
    """Embed (or read embeddings), cluster, compare, write duplicates/ and groups/."""
    input_path, output_dir = given_paths(input_path), as_given(output_dir)
    refuse_object_storage(input_path, output_dir)
    return run_in_locked_folder(input_path, output_dir, "find", lambda: find_semantic_in_locked_folder(
        input_path, output_dir, config, executor, progress), config=config)


def find_semantic_in_locked_folder(input_path: str | list[str], output_dir: str, config: SemanticConfig,
                                   executor: BaseExecutor | None, progress: bool) -> SemanticSummary:
    """`find_semantic` for a caller that holds the output folder's lock."""
    refuse_object_storage(input_path, output_dir)
    executor = executor or LocalExecutor()
    shards = input_units(input_path, output_dir)  # refuses an input inside the output, before the cleanup
    narrow_to_files(output_dir, input_files_and_folders(shards))
    remove_stale_temp_files(output_dir)
    hash_pairs = None
    if config.embeddings is None:
        default = config.model == DEFAULT_MODEL
        files = embed_shards(shards, os.path.join(output_dir, "embeddings"), config, executor, progress,
                             input_size=INPUT_SIZE if default else None)
        refuse_too_many_clusters(files, config.n_clusters, embedded=True)
        id_field, embedding_field = "id", "embeddings"
        if config.with_hashes:
            hash_pairs = hash_candidates(input_path, output_dir, config, executor, progress)
    else:
        files = embedding_sources(config.embeddings)
        refuse_too_many_clusters(files, config.n_clusters, embedded=False)
        id_field, embedding_field = _fields(files[0], config.embeddings_key)
        with phase("check embedding IDs against the input", progress):
            check_ids_match(files, id_field, shards)
    workflow = SemanticDeduplicationWorkflow(files, output_dir, n_clusters=config.n_clusters, id_field=id_field,
                                             embedding_field=embedding_field, which_to_keep=config.keep,
                                             eps=config.threshold, random_state=config.random_state,
                                             max_iter=config.max_iter)
    return workflow.run(executor, progress, extra_pairs=hash_pairs, record={
        "config": {"method": "semantic", **asdict(config)}, "input": absolute_paths(input_path),
        "input_root": shards[0].root or None, "reference": None})


def refuse_too_many_clusters(files: list, n_clusters: int | None, embedded: bool) -> None:
    """--clusters above the number of images, refused before the hashing and clustering (the row counts are
    in the tables' footers); after embedding, the message says that a rerun reuses the embeddings."""
    if n_clusters is None:
        return
    try:
        rows = sum(pq.ParquetFile(str(getattr(f, "parquet", f))).metadata.num_rows for f in files)
    except (OSError, pa.ArrowException):  # a damaged table: the reading that follows names it
        return
    if n_clusters > rows:
        kept = " (the embeddings are kept: a rerun reuses them)" if embedded else ""
        raise ValueError(f"--clusters {n_clusters} is more than the {rows} images with embeddings; use at most "
                         f"{rows}{kept}")


def hash_candidates(input_path: str | list[str], output_dir: str, config: SemanticConfig, executor: BaseExecutor,
                    progress: bool) -> ExtraPairs:
    """pHash and both dHashes (and their mirrors with `flip`) of every image, kept in OUT/hashes/ as
    `find --method phash --confirm` keeps them, and every pair within `hash_accept` bits of pHash, by ID:
    the pairs the workflow accepts when their embeddings are within `hash_eps` too (exact copies, same
    bytes, always), with the hashes by ID that every other pair is checked against (`HashCheck`)."""
    from functools import partial

    from imagesieve.matching.near_search import near_pairs

    hashing = FindConfig(method="phash", flip=config.flip, threshold=config.hash_bits, keep="first",
                         confirm=config.confirm_bits, on_error=config.on_error)
    hashes_dir = os.path.join(output_dir, "hashes")
    units = hash_shards(input_path, output_dir, hashes_dir, hashing, executor, progress, "hash")
    table, _ = split_readable(load_hashes(hashes_dir, units))
    rows = np.arange(table.num_rows)
    codes = table.column("phash").to_numpy().astype(np.uint64)
    with phase("pHash pairs", progress):
        search = partial(near_pairs, parts=executor.parallelism(), run_jobs=executor.map)
        i, j = near_edges(codes, config.hash_bits, hashing, table, rows, search)
    ids = table.column("id").combine_chunks()
    same_bytes = pc.equal(table.column("bytes_hash").take(pa.array(i)), table.column("bytes_hash").take(pa.array(j)))
    kinds = ("phash", *CONFIRMED_BY["phash"])
    words = lambda names: np.stack([table.column(k).to_numpy().astype(np.uint64) for k in names], axis=1)  # noqa: E731
    check = HashCheck(ids, words(kinds), words([f"{k}_flip" for k in kinds]) if config.flip else None,
                      config.eps_hash_limit, config.confirm_bits)
    return ExtraPairs(ids.take(pa.array(i)), ids.take(pa.array(j)), same_bytes.to_numpy(zero_copy_only=False),
                      config.hash_distance, check)


def embed_shards(shards: list[InputUnit], embeddings_dir: str, config: SemanticConfig,
                 executor: BaseExecutor, progress: bool, centres: tuple[float, ...] = (1.0,),
                 input_size: int | None = None) -> list[str]:
    """Embed every shard whose table is missing or stale; returns the tables in shard order. `centres`,
    `input_size`: see `ImageEmbeddingStage`."""
    clip = is_clip_folder(config.model)
    model_id = clip_identity(config.model) if clip else model_identity(config.model, config.flip, centres, input_size)
    needed = {f"json.{f}" for f in config.json_fields}
    todo = [unit for unit in shards
            if not is_current(embedding_table_path(embeddings_dir, unit.rel), unit.fingerprint, model_id, needed)]
    embedder = ImageEmbeddingStage(model=DEFAULT_MODEL if clip else config.model,
                                   model_dir=config.model if clip else None,
                                   model_inference_batch_size=config.model_inference_batch_size,
                                   on_error=config.on_error, json_fields=config.json_fields, flip=config.flip,
                                   centres=centres, input_size=input_size)
    run_on_units("embed", [reader_for(shards), embedder,
                           EmbeddingWriterStage(embeddings_dir=embeddings_dir, model_id=model_id)],
                 todo, len(shards), executor, progress)
    return [embedding_table_path(embeddings_dir, unit.rel) for unit in shards]


def _fields(source: str | NpyPart, key: str | None = None) -> tuple[str, str]:
    """Our column names (`id`, `embeddings`), or Curator's (`image_id`, `embedding`) when a file has those;
    a clip-retrieval folder's ID column is `key` unless named."""
    if isinstance(source, NpyPart):
        return key or default_id_field([source]), "embeddings"
    if key is not None:
        raise ValueError("--embeddings-key names the ID column of a clip-retrieval folder (img_emb/, metadata/); "
                         f"{source} is a Parquet file of embeddings")
    names = parquet_columns(source)
    if not {"id", "embeddings"} <= names and set(CURATOR_FIELDS) <= names:
        return CURATOR_FIELDS
    return "id", "embeddings"


def check_ids_match(files: list[str | NpyPart], id_field: str, shards: list[InputUnit]) -> None:
    """Every embedding must belong to an input sample and every sample must have an embedding:
    otherwise a removal list would silently miss images or name images that are not there."""
    keys: dict[str, str] = {}
    reader = ShardReader()
    for unit in shards:
        if unit.is_folder_chunk:  # an image folder: IDs are the files' paths under it
            keys.update((os.path.relpath(path, unit.root), path) for path in unit.paths)
            continue
        for sample in iter_samples(unit.paths[0], [], reader):
            keys[sample.key] = unit.paths[0]
    key_set = pa.array(list(keys), pa.string())
    seen: set[str] = set()
    for source in files:
        path = source.parquet if isinstance(source, NpyPart) else source
        ids = pq.read_table(path, columns=[id_field]).column(id_field).cast(pa.string())
        unknown = pc.invert(pc.is_in(ids, value_set=key_set))
        if pc.any(unknown).as_py():
            row = pc.index(unknown, True).as_py()
            raise EmbeddingsError(f"{path} row {row}: ID {ids[row].as_py()!r} is not a sample of the input shards")
        seen.update(ids.to_pylist())
    missing = [key for key in keys if key not in seen]
    if missing:
        raise EmbeddingsError(f"{keys[missing[0]]}: sample {missing[0]!r} has no embedding in "
                              f"{', '.join(map(str, files))} ({len(missing)} samples have none)")

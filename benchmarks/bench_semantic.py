"""Semantic deduplication: recall and speed against exact brute force, cost growth, embedding
throughput, peak memory, and quality on labelled real photos beside pHash.

    W=/var/tmp/bench_semantic
    python benchmarks/bench_semantic.py search --n 100000 --work $W --make-only
    python benchmarks/bench_semantic.py search --n 1000000 --work $W --make-only
    python benchmarks/bench_semantic.py search --n 100000 --work $W
    python benchmarks/bench_semantic.py search --n 1000000 --work $W --queries 20000
    python benchmarks/bench_semantic.py embed --images 2000 [--flip]
    python benchmarks/bench_semantic.py quality
    python benchmarks/bench_semantic.py quality --recipes 48x64 --seeds 0 6 7 8
    python benchmarks/bench_semantic.py fresh --photos DIR   # the shipped defaults on photos no choice saw

search: N unit vectors in 512-d with cluster structure (2,000 topics) and 10% planted near-duplicates
(cosine similarity spread over [1 - 0.9 eps, 1 - 0.1 eps] to their original), written to Parquet.
Our pairs are those the clustered search finds (k-means + within-cluster comparison); the truth is
faiss `IndexFlatIP.range_search` at the same threshold over all N (or over `--queries` random rows
against all N, its time scaled up by N / queries, when a full run would take hours). Times: our
search (k-means training, streamed assignment, pairwise jobs on the executor) against the brute
force's, and the whole workflow from Parquet to written output. Peak memory is this process's
(and its workers') maximum resident set, taken after the workflow (`peak_mb_workflow`) and again
after the brute force, which holds all vectors twice.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import resource
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.embeddings_io import list_parquet, load_embeddings
from imagesieve.matching.semantic import cluster_jobs, similar_pairs
from imagesieve.workflows.semantic import SemanticDeduplicationWorkflow, auto_clusters

CHUNK = 100_000
EMBED_TARGET = 200  # images/s per core, one worker, one thread (issue 25)


def make_embeddings(folder: str, n: int, dim: int, eps: float, seed: int = 0, topics: int = 2000,
                    dup_fraction: float = 0.1) -> None:
    """Parquet files of `n` rows: originals around random topic centres, then planted near-duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n_dup = int(n * dup_fraction)
    n_orig = n - n_dup
    os.makedirs(folder, exist_ok=True)
    originals_kept = []  # a sample of originals to copy, drawn as we go
    written = 0
    part = 0
    while written < n:
        rows = min(CHUNK, n - written)
        if written < n_orig:
            rows = min(rows, n_orig - written)
            x = centres[rng.integers(topics, size=rows)] + rng.normal(scale=1 / np.sqrt(dim), size=(rows, dim))
            x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
            take = rng.random(rows) < n_dup / n_orig
            originals_kept.append(x[take])
        else:
            pool = np.concatenate(originals_kept)
            base = pool[rng.integers(len(pool), size=rows)]
            target = 1 - eps * rng.uniform(0.1, 0.9, size=rows)  # cosine similarity to the original
            direction = rng.normal(size=(rows, dim)).astype(np.float32)
            direction -= (direction * base).sum(1, keepdims=True) * base  # orthogonal to the original
            direction /= np.linalg.norm(direction, axis=1, keepdims=True)
            x = (base * target[:, None] + direction * np.sqrt(1 - target ** 2)[:, None]).astype(np.float32)
        ids = pa.array([f"{written + k:09d}" for k in range(rows)])
        values = pa.array(x.reshape(-1), pa.float32())
        offsets = pa.array(np.arange(0, (rows + 1) * dim, dim, dtype=np.int32))
        table = pa.table({"id": ids, "embeddings": pa.ListArray.from_arrays(offsets, values)})
        pq.write_table(table, os.path.join(folder, f"part-{part:05d}.parquet"))
        written += rows
        part += 1


def peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def search(args: argparse.Namespace) -> dict:
    work = args.work or tempfile.mkdtemp(prefix="bench_semantic_")
    folder = os.path.join(work, f"emb_{args.n}_{args.dim}")
    if not os.path.exists(folder):
        started = time.monotonic()
        make_embeddings(folder, args.n, args.dim, args.eps)
        print(f"made {args.n} x {args.dim} embeddings in {time.monotonic() - started:.0f} s", flush=True)
    if args.make_only:
        return {"made": folder}
    executor = LocalExecutor(num_workers=args.workers)
    k = args.clusters or auto_clusters(args.n)
    result = {"n": args.n, "dim": args.dim, "eps": args.eps, "clusters": k, "workers": executor.parallelism(),
              "n_probe": args.n_probe, "probe_margin": args.probe_margin}

    # the whole workflow, Parquet in, duplicates and groups out
    started = time.monotonic()
    options = {"n_clusters": k, "eps": args.eps, "n_probe": args.n_probe, "probe_margin": args.probe_margin}
    summary = SemanticDeduplicationWorkflow(folder, os.path.join(work, f"out_{args.n}"), which_to_keep="first",
                                            **options).run(executor)
    result["workflow_s"] = time.monotonic() - started
    result["duplicates"] = summary.duplicates
    result["peak_mb_workflow"] = peak_mb()  # before the brute force loads everything into memory

    # our search alone, on the loaded embeddings, keeping the pairs
    memmap = os.path.join(work, "bench.f32")
    data = load_embeddings(list_parquet(folder), memmap)
    workflow = SemanticDeduplicationWorkflow(folder, work, **options)
    started = time.monotonic()
    labels, sims = workflow._cluster(data, k)
    jobs = cluster_jobs(labels, sims, workflow.probe_margin, 4 * executor.parallelism())
    parts = executor.map(similar_pairs, [(data.path, (data.n, data.dim), job, 1 - args.eps) for job in jobs])
    result["search_s"] = time.monotonic() - started
    result["guests"] = int(sum(len(g) for job in jobs for _, g in job))
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    ours = set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist(), strict=True))

    # exact brute force at the same threshold
    import faiss

    faiss.omp_set_num_threads(executor.parallelism())
    x = np.asarray(data.open())
    queries = np.arange(data.n) if not args.queries or args.queries >= data.n else np.sort(
        np.random.default_rng(1).choice(data.n, args.queries, replace=False))
    started = time.monotonic()
    index = faiss.IndexFlatIP(data.dim)
    index.add(x)
    answers = []
    for start in range(0, len(queries), 8192):
        q = queries[start:start + 8192]
        lims, _, found = index.range_search(np.ascontiguousarray(x[q]), 1 - args.eps)
        answers.append((q, lims, found))
    brute_s = (time.monotonic() - started) * data.n / len(queries)
    truth = set()
    for q, lims, found in answers:
        a = np.repeat(q, np.diff(lims).astype(np.int64))
        pairs = {(min(u, v), max(u, v)) for u, v in zip(a.tolist(), found.tolist(), strict=True) if u != v}
        truth |= pairs
    os.remove(memmap)
    in_sample = set(queries.tolist())
    ours_sampled = {p for p in ours if p[0] in in_sample or p[1] in in_sample}
    result.update({"brute_force_s": brute_s, "brute_force_queries": int(len(queries)),
                   "true_pairs": len(truth), "our_pairs": len(ours_sampled),
                   "recall": len(truth & ours_sampled) / max(1, len(truth)),
                   "speedup_search": brute_s / result["search_s"], "speedup_workflow": brute_s / result["workflow_s"],
                   "peak_mb_with_brute_force": peak_mb()})
    return result


def embed(args: argparse.Namespace) -> dict:
    """Images per second per core: one worker, one onnxruntime thread, real photo tiles at two sizes;
    the default recipe against the one before issue 25 (a 48-pixel thumbnail scaled to 224), on the
    same images in the same process, alternating, `--repeats` times each; medians."""
    from PIL import Image

    from imagesieve.stages.embedding import ImageEmbeddingStage
    from imagesieve.tasks import ImageBatch, ImageObject, MemberRef
    from imagesieve.workflows.sample_data import distinct_images, encode
    from imagesieve.workflows.semantic_find import INPUT_SIZE

    tiles = distinct_images()
    out = {"flip": args.flip, "repeats": args.repeats, "load_average_before": os.getloadavg()[0]}
    stages = {"before (224)": ImageEmbeddingStage(model_inference_batch_size=32, threads=1, flip=args.flip),
              f"default ({INPUT_SIZE})": ImageEmbeddingStage(model_inference_batch_size=32, threads=1, flip=args.flip,
                                                             input_size=INPUT_SIZE)}
    for stage in stages.values():
        stage.setup()
    for size in (128, 512):
        images = []
        for k in range(args.images):
            tile = tiles[k % len(tiles)][1]
            data = encode(tile if size == 128 else tile.resize((size, size), Image.Resampling.BICUBIC))
            images.append(ImageObject(image_id=f"{k:06d}", image_ext="jpg",
                                      members={"jpg": MemberRef(f"{k:06d}.jpg", "", 0, len(data), data=data)}))
        rates = {name: [] for name in stages}
        for _ in range(args.repeats):
            for name, stage in stages.items():
                started = time.monotonic()
                stage.process(ImageBatch(dataset_name="bench", data=images, task_id="bench"))
                rates[name].append(args.images / (time.monotonic() - started))
        for name, values in rates.items():
            out[f"images_per_s_per_core_{size}px {name}"] = round(float(np.median(values)), 1)
        before, after = (float(np.median(v)) for v in rates.values())
        out[f"ratio_{size}px"] = round(after / before, 2)
    out["load_average_after"] = os.getloadavg()[0]
    out["peak_mb"] = peak_mb()
    slowest = min(v for k, v in out.items() if k.startswith("images_per_s_per_core") and "default" in k)
    out[f"target: >= {EMBED_TARGET} images/s per core (default, both sizes)"] = \
        "met" if slowest >= EMBED_TARGET else "NOT met"
    return out


# the labelled set of `quality`: every transform of the pHash and copy benchmarks (19 images a tile)
EASY = ("exact_copy", "resize_0.5", "resize_1.5", "jpeg_q30", "jpeg_q60", "jpeg_q25", "to_png", "to_webp",
        "crop_3pct", "crop_5pct", "brightness_1.2", "brightness_1.12")
HARD = ("crop_10pct", "crop_20pct", "hflip", "rotate_8", "caption_15pct", "saturation_1.6")
# embedding recipes tried: (thumbnail, model input) pixels; (48, 224) is the recipe before issue 25
RECIPES = ((48, 224), (48, 96), (48, 64), (32, 64), (64, 64), (48, 48))
EPS_GRID = tuple(float(e) for e in np.round(np.arange(0.02, 0.0651, 0.005), 3))
HASH_GRID = (8, 10, 12, 14, 16)  # pHash bits of a hash-found pair
HASH_EPS_GRID = (0.1, 0.15, 0.2, 0.25, 0.3, 1.0)  # ... whose cosine distance is at most this (1.0: any)
EPS_HASH_GRID = (16, 18, 20, 22, 24, 26, 28, 64)  # pHash bits of an embedding pair (64: any)
CONFIRM_GRID = (40, 48, 56, 64, 192)  # pHash + both dHashes of every pair but exact copies (192: any)
# the rule that picks the defaults on the tuning half, fixed before any held-out figure was seen: among
# settings at precision >= 0.98 there (a margin over the target, 0.97) that find every easy transform's
# copies at recall >= 0.98 (each transform, not their mean), the highest hard recall; ties to the higher
# precision
TUNE_PRECISION, TUNE_EASY = 0.98, 0.98


def embed_labelled(images: list[bytes], thumbnail: int, size: int, flip: bool = False,
                   quantized: bool = False) -> np.ndarray:
    """The default model's embeddings of `images` with this recipe, decoded as `ImageEmbeddingStage`
    decodes them (JPEGs at reduced size)."""
    from dataclasses import replace

    from PIL import Image

    from imagesieve.stages.embedding.onnx_model import OPEN_NSFW, OnnxEmbedder

    model = OnnxEmbedder(preprocess=replace(OPEN_NSFW, thumbnail=thumbnail), input_size=None if size == 224 else size)

    def opened(data: bytes) -> Image.Image:
        image = Image.open(io.BytesIO(data))
        if image.format == "JPEG":
            image.draft("RGB", (model.decode_size, model.decode_size))
        image.load()
        return image

    return np.concatenate([model([opened(b) for b in images[s:s + 32]], flip=flip)
                           for s in range(0, len(images), 32)])


class Half:
    """One half of the labelled set (`evaluate.split`), its candidate pairs and their truth, for fast
    scoring of many settings: every pair within the grid's loosest setting, as flat arrays."""

    def __init__(self, labelled, rows: np.ndarray, vectors: np.ndarray, hash_dist: np.ndarray,
                 confirm_dist: np.ndarray | None = None) -> None:
        source = labelled.source[rows]
        names = np.array(labelled.transform)[rows]
        n = len(rows)
        sim = vectors[rows] @ vectors[rows].T
        dist = np.triu(1 - sim, 1)
        hashes = hash_dist[np.ix_(rows, rows)]
        upper = np.triu(np.ones((n, n), bool), 1)
        loose = upper & ((dist <= max(EPS_GRID)) | (hashes <= max(HASH_GRID)))
        self.i, self.j = np.nonzero(loose)
        self.dist, self.hash = dist[self.i, self.j], hashes[self.i, self.j]
        total = hashes if confirm_dist is None else confirm_dist[np.ix_(rows, rows)]  # pHash + both dHashes
        self.total = total[self.i, self.j]
        self.same = source[self.i] == source[self.j]
        self.true_pairs = int(((source[:, None] == source[None, :]) & upper).sum())
        originals = {s: r for r, (s, t) in enumerate(zip(source.tolist(), names.tolist(), strict=True))
                     if t == "original"}
        self.copies = {t: np.flatnonzero(names == t) for t in (*EASY, *HARD)}
        self.original = {t: np.array([originals[s] for s in source[r]]) for t, r in self.copies.items()}
        self.pair_dist = {t: 1 - np.einsum("ij,ij->i", vectors[rows][r], vectors[rows][self.original[t]])
                          for t, r in self.copies.items()}
        self.pair_hash = {t: hashes[r, self.original[t]] for t, r in self.copies.items()}
        self.pair_total = {t: total[r, self.original[t]] for t, r in self.copies.items()}

    @staticmethod
    def _found(dist, hash_, total, eps, hash_threshold, hash_eps, eps_hash, confirm):
        return (((dist <= eps) & (hash_ <= eps_hash)) | ((hash_ <= hash_threshold) & (dist <= hash_eps))) & (
            total <= confirm)

    def score(self, eps: float, hash_threshold: int, hash_eps: float, eps_hash: int = 64,
              confirm: int = 192) -> dict:
        """A pair is found when its cosine distance is within eps and its pHash distance within eps_hash,
        or its pHash distance within hash_threshold and its cosine distance within hash_eps
        (`hash_threshold` -1: embeddings alone); either way with pHash and both dHashes within `confirm`
        bits together (exact copies are within any). As `find --method semantic` decides."""
        found = self._found(self.dist, self.hash, self.total, eps, hash_threshold, hash_eps, eps_hash, confirm)
        tp, fp = int((found & self.same).sum()), int((found & ~self.same).sum())
        recall = {t: float(self._found(self.pair_dist[t], self.pair_hash[t], self.pair_total[t], eps,
                                       hash_threshold, hash_eps, eps_hash, confirm).mean())
                  for t in self.copies}
        return {"precision": tp / (tp + fp) if tp + fp else 1.0, "recall_all_pairs": tp / self.true_pairs,
                "easy_recall": float(np.mean([recall[t] for t in EASY])),
                "easy_recall_min": min(recall[t] for t in EASY),
                "hard_recall": float(np.mean([recall[t] for t in HARD])), "false_pairs": fp,
                "recall_by_transform": {t: round(v, 3) for t, v in recall.items()}}

    def hash_score(self, threshold: int) -> dict:
        """pHash alone at `threshold` (the embeddings not consulted)."""
        return self.score(-1.0, threshold, 2.0)


def choose(half: Half) -> tuple[tuple[float, int, float, int, int], dict]:
    """((eps, hash_threshold, hash_eps, eps_hash, confirm), score) by the rule above; with no setting over
    the floors, the highest precision."""
    best, best_key, best_score = None, None, None
    for setting in itertools.product(EPS_GRID, HASH_GRID, HASH_EPS_GRID, EPS_HASH_GRID, CONFIRM_GRID):
        s = half.score(*setting)
        good = s["precision"] >= TUNE_PRECISION and s["easy_recall_min"] >= TUNE_EASY
        key = (good, s["hard_recall"] if good else s["precision"], s["precision"])
        if best_key is None or key > best_key:
            best, best_key, best_score = setting, key, s
    return best, best_score


def quality(args: argparse.Namespace) -> dict:
    """Defaults chosen on one half of the labelled set, split by source photo, and scored on the other:
    per embedding recipe, the (eps, pHash threshold, pHash's cosine bound, pHash bound of embedding pairs,
    hash confirmation budget) that `choose` picks on the tuning half, then the best recipe by the same
    rule; the held-out half's figures of that choice only (and whether the code's defaults are that
    choice), beside pHash at its default and the finder before issue 25 (48-pixel thumbnail at 224, eps
    0.05, embeddings alone). With several `--seeds`, the whole procedure runs on each split (the
    defaults are the first seed's choice; the others show how much the choice depends on the split)."""
    from evaluate import SPLIT_SEED, build_labelled_set, hash_set, pair_distances, split

    from imagesieve.workflows import semantic_find as defaults

    seeds = [SPLIT_SEED] if args.seeds is None else args.seeds
    labelled = build_labelled_set(tuple(dict.fromkeys((*EASY, *HARD))))
    hashes = {(kind, flip): hash_set(labelled, kind, flip=flip) for kind in ("phash", "dhash", "dhash_vertical")
              for flip in (False, True)}
    plain, mirrored = (pair_distances(*hashes[("phash", flip)]) for flip in (False, True))
    total = sum(pair_distances(*hashes[(kind, False)]) for kind in ("phash", "dhash", "dhash_vertical"))
    total_mirrored = sum(pair_distances(*hashes[(kind, True)]) for kind in ("phash", "dhash", "dhash_vertical"))
    recipes = RECIPES if args.recipes is None else tuple(tuple(map(int, r.split("x"))) for r in args.recipes)
    vectors = {recipe: embed_labelled(labelled.images, *recipe) for recipe in recipes}
    out = {"images": len(labelled.images), "rule": {"tune_precision_floor": TUNE_PRECISION,
                                                    "tune_easy_recall_floor_each_transform": TUNE_EASY}}
    for seed in seeds:
        tune, test = split(labelled, 0, seed), split(labelled, 1, seed)
        res = {"tune_images": len(tune), "test_images": len(test),
               "tune_photos": int(len(np.unique(labelled.photo[tune]))),
               "test_photos": int(len(np.unique(labelled.photo[test])))}
        tuned = {}
        for recipe in recipes:
            setting, s = choose(Half(labelled, tune, vectors[recipe], plain, total))
            tuned[recipe] = (setting, s)
            res[f"tuning half: recipe {recipe[0]} px at {recipe[1]}"] = {"setting": setting, **_brief(s)}
            print(f"seed {seed}: tuned {recipe[0]} px at {recipe[1]}: (eps, pHash bits, within, eps pHash bits, "
                  f"confirm) {setting}: {_brief(s)}", flush=True)
        held_plain = Half(labelled, test, vectors[recipes[0]], plain)
        res["held out: pHash t=10 (its default)"] = _brief(held_plain.hash_score(10))
        if (48, 224) in vectors:
            res["held out: before issue 25 (48 px at 224, eps 0.05, embeddings alone)"] = _brief(
                Half(labelled, test, vectors[(48, 224)], plain).score(0.05, -1, 0))

        def key(item):
            s = item[1][1]
            good = s["precision"] >= TUNE_PRECISION and s["easy_recall_min"] >= TUNE_EASY
            return (good, s["hard_recall"] if good else s["precision"], s["precision"])

        recipe, (setting, _) = max(((r, v) for r, v in tuned.items() if r[1] <= args.max_input), key=key)
        res["chosen"] = {"thumbnail": recipe[0], "input_size": recipe[1], "setting": setting}
        res["held out: chosen"] = Half(labelled, test, vectors[recipe], plain, total).score(*setting)
        res["held out: chosen"]["false_by_photo"] = None
        flipped = embed_labelled(labelled.images, recipe[0], recipe[1], flip=True)
        flip_setting, s = choose(Half(labelled, tune, flipped, mirrored, total_mirrored))
        res["tuning half: --flip"] = {"setting": flip_setting, **_brief(s)}
        res["held out: pHash t=10, --flip"] = _brief(Half(labelled, test, flipped, mirrored).hash_score(10))
        res["held out: chosen, --flip (scored with flip pairs)"] = Half(
            labelled, test, flipped, mirrored, total_mirrored).score(*flip_setting)
        code = (defaults.THUMBNAIL, defaults.INPUT_SIZE,
                (defaults.DEFAULT_EPS, defaults.DEFAULT_HASH_ACCEPT, defaults.DEFAULT_HASH_EPS,
                 defaults.DEFAULT_EPS_HASH_BITS, defaults.DEFAULT_CONFIRM),
                (defaults.DEFAULT_EPS_FLIP, defaults.DEFAULT_HASH_ACCEPT_FLIP, defaults.DEFAULT_HASH_EPS_FLIP,
                 defaults.DEFAULT_EPS_HASH_BITS_FLIP, defaults.DEFAULT_CONFIRM_FLIP))
        res["the code's defaults are this seed's choice"] = code == (*recipe, setting, flip_setting)
        for name in ("held out: chosen", "held out: chosen, --flip (scored with flip pairs)"):
            res[name].pop("false_by_photo", None)
        print(f"seed {seed}: held out {json.dumps(res['held out: chosen'])}", flush=True)
        out[f"split seed {seed}"] = res
    return out


def fresh(args: argparse.Namespace) -> dict:
    """The code's semantic defaults, as they ship, scored on photos that neither half of `quality`'s
    split holds (`--photos`: a folder holding FRESH_PHOTOS), so no choice ever saw them: every image
    of the set is held out. Beside pHash at its default, and `--flip` at its defaults."""
    from evaluate import FRESH_PHOTOS, build_labelled_set, hash_set, pair_distances, photos_in

    from imagesieve.workflows import semantic_find as defaults

    photos = photos_in(args.photos, FRESH_PHOTOS)
    labelled = build_labelled_set(tuple(dict.fromkeys((*EASY, *HARD))), photos=photos)
    every = np.arange(len(labelled.images))
    hashes = {(kind, flip): hash_set(labelled, kind, flip=flip) for kind in ("phash", "dhash", "dhash_vertical")
              for flip in (False, True)}
    plain, mirrored = (pair_distances(*hashes[("phash", flip)]) for flip in (False, True))
    total = sum(pair_distances(*hashes[(kind, False)]) for kind in ("phash", "dhash", "dhash_vertical"))
    total_mirrored = sum(pair_distances(*hashes[(kind, True)]) for kind in ("phash", "dhash", "dhash_vertical"))
    recipe = (defaults.THUMBNAIL, defaults.INPUT_SIZE)
    setting = (defaults.DEFAULT_EPS, defaults.DEFAULT_HASH_ACCEPT, defaults.DEFAULT_HASH_EPS,
               defaults.DEFAULT_EPS_HASH_BITS, defaults.DEFAULT_CONFIRM)
    flip_setting = (defaults.DEFAULT_EPS_FLIP, defaults.DEFAULT_HASH_ACCEPT_FLIP, defaults.DEFAULT_HASH_EPS_FLIP,
                    defaults.DEFAULT_EPS_HASH_BITS_FLIP, defaults.DEFAULT_CONFIRM_FLIP)
    vectors = embed_labelled(labelled.images, *recipe)
    flipped = embed_labelled(labelled.images, *recipe, flip=True)
    half = Half(labelled, every, vectors, plain, total)
    flip_half = Half(labelled, every, flipped, mirrored, total_mirrored)
    return {"photos": len(photos), "tiles": int(labelled.source.max()) + 1, "images": len(labelled.images),
            "recipe (thumbnail, input)": recipe, "defaults": setting, "defaults --flip": flip_setting,
            "semantic, defaults": half.score(*setting),
            "pHash t=10 (its default)": half.hash_score(10),
            "semantic --flip, defaults (flip pairs scored)": flip_half.score(*flip_setting),
            "pHash t=10 --flip": Half(labelled, every, flipped, mirrored).hash_score(10)}


def _brief(s: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items() if k != "recall_by_transform"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("search")
    s.add_argument("--n", type=int, default=100_000)
    s.add_argument("--dim", type=int, default=512)
    s.add_argument("--eps", type=float, default=0.05)
    s.add_argument("--clusters", type=int, default=None)
    s.add_argument("--queries", type=int, default=None,
                   help="brute force over this many random rows only (its time scaled by N / queries)")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--n-probe", type=int, default=5)
    s.add_argument("--probe-margin", type=float, default=None, help="default: eps")
    s.add_argument("--work", default=None, help="folder for the generated embeddings (reused across runs)")
    s.add_argument("--make-only", action="store_true",
                   help="only write the embeddings (run first, so the measured run's peak memory is its own)")
    e = sub.add_parser("embed")
    e.add_argument("--images", type=int, default=1000)
    e.add_argument("--flip", action="store_true", help="mirror-invariant embeddings (two model passes)")
    e.add_argument("--repeats", type=int, default=3, help="runs of each recipe (medians)")
    q = sub.add_parser("quality")
    q.add_argument("--seeds", type=int, nargs="*", default=None,
                   help="the splits' seeds (default evaluate.SPLIT_SEED); the defaults are the first's choice")
    q.add_argument("--recipes", nargs="*", default=None, metavar="THUMBxSIZE",
                   help="embedding recipes to tune (default: all of RECIPES), e.g. 48x64")
    q.add_argument("--max-input", type=int, default=64,
                   help="choose among recipes with at most this model input (64: the ones that reach 200 "
                        "images/s per core, `embed`)")
    f = sub.add_parser("fresh")
    f.add_argument("--photos", required=True, metavar="DIR",
                   help="a folder holding evaluate.FRESH_PHOTOS: apt-get download opencv-doc; "
                        "dpkg-deb -x opencv-doc_*.deb X; then X/usr/share/doc/opencv-doc/examples/data")
    args = parser.parse_args()
    result = {"search": search, "embed": embed, "quality": quality, "fresh": fresh}[args.what](args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Semantic deduplication: recall and speed against exact brute force, cost growth, embedding
throughput, peak memory, and quality on labelled real photos beside pHash.

    W=/var/tmp/bench_semantic
    python benchmarks/bench_semantic.py search --n 100000 --work $W --make-only
    python benchmarks/bench_semantic.py search --n 1000000 --work $W --make-only
    python benchmarks/bench_semantic.py search --n 100000 --work $W
    python benchmarks/bench_semantic.py search --n 1000000 --work $W --queries 20000
    python benchmarks/bench_semantic.py embed --images 2000 [--flip]
    python benchmarks/bench_semantic.py quality

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
    """Images per second per core: one worker, one onnxruntime thread, real photo tiles at two sizes."""
    from PIL import Image

    from imagesieve.stages.embedding import ImageEmbeddingStage
    from imagesieve.tasks import ImageBatch, ImageObject, MemberRef
    from imagesieve.workflows.sample_data import distinct_images, encode

    tiles = distinct_images()
    out = {"flip": args.flip}
    for size in (128, 512):
        images = []
        for k in range(args.images):
            tile = tiles[k % len(tiles)][1]
            data = encode(tile if size == 128 else tile.resize((size, size), Image.Resampling.BICUBIC))
            images.append(ImageObject(image_id=f"{k:06d}", image_ext="jpg",
                                      members={"jpg": MemberRef(f"{k:06d}.jpg", "", 0, len(data), data=data)}))
        stage = ImageEmbeddingStage(model_inference_batch_size=32, threads=1, flip=args.flip)
        stage.setup()
        started = time.monotonic()
        stage.process(ImageBatch(dataset_name="bench", data=images, task_id="bench"))
        out[f"images_per_s_per_core_{size}px"] = args.images / (time.monotonic() - started)
    out["peak_mb"] = peak_mb()
    return out


def quality(args: argparse.Namespace) -> dict:
    """Precision and recall per transform on the labelled set, default model at its default eps (plain
    and --flip), beside pHash at its default threshold (plain and --flip)."""
    from PIL import Image

    from imagesieve.stages.embedding.onnx_model import OnnxEmbedder
    from imagesieve.workflows.evaluate import build_labelled_set, hash_set, pair_distances, score
    from imagesieve.workflows.semantic_find import DEFAULT_EPS, DEFAULT_EPS_FLIP

    labelled = build_labelled_set()
    model = OnnxEmbedder()
    images = [Image.open(io.BytesIO(b)) for b in labelled.images]
    out = {}
    runs = []
    for flip, eps in ((False, args.eps or DEFAULT_EPS), (True, args.eps or DEFAULT_EPS_FLIP)):
        vectors = np.concatenate([model(images[s:s + 64], flip=flip) for s in range(0, len(images), 64)])
        # score() counts distance <= threshold: distance = 1 - similarity
        runs.append((f"semantic{' --flip' if flip else ''}", 1 - vectors @ vectors.T, eps))
    runs.append(("phash", pair_distances(*hash_set(labelled, "phash")), 10))
    runs.append(("phash --flip", pair_distances(*hash_set(labelled, "phash", flip=True)), 10))
    for name, dist, _ in runs[:2]:  # how eps was chosen: best F1 (flip pairs excluded without --flip)
        flips = "--flip" in name
        sweep = {}
        for eps in np.round(np.arange(0.02, 0.105, 0.005), 3):
            s = score(labelled, dist, name, float(eps), exclude=() if flips else ("hflip",))
            sweep[float(eps)] = round(s.f1, 3)
        out[f"{name} eps sweep (F1)"] = sweep
        best = max(sweep, key=sweep.get)
        s = score(labelled, dist, name, best, exclude=() if flips else ("hflip",))
        out[f"{name} at its best eps"] = {"threshold": best, "precision": s.precision, "recall": s.recall,
                                          "f1": s.f1, "recall_by_transform": s.recall_by_transform}
    for name, dist, threshold in runs:
        for flips in (False, True):
            s = score(labelled, dist, name, threshold, exclude=() if flips else ("hflip",))
            out[f"{name}{' with flips' if flips else ''}"] = {
                "threshold": threshold, "precision": s.precision, "recall": s.recall, "f1": s.f1,
                "recall_by_transform": s.recall_by_transform}
    return out


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
    q = sub.add_parser("quality")
    q.add_argument("--eps", type=float, default=None, help="default: the CLI's default (with and without --flip)")
    args = parser.parse_args()
    result = {"search": search, "embed": embed, "quality": quality}[args.what](args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

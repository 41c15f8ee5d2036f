"""`find --method semantic` end to end on real-photo shards: embeddings reused, precomputed embeddings
checked against the input, and find -> remove taking out mirrored copies that pHash misses."""

from __future__ import annotations

import json
import os
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from imagesieve.cli import main
from imagesieve.executors.local import LocalExecutor
from imagesieve.matching.embeddings_io import EmbeddingsError
from imagesieve.report import write_report
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.stages.io import ImageReaderStage
from imagesieve.workflows.find import FindConfig, find_duplicates
from imagesieve.workflows.remove import remove_duplicates
from imagesieve.workflows.sample_data import encode, write_shard
from imagesieve.workflows.semantic_find import SemanticConfig, find_semantic

MIRRORED = [f"m{k:03d}" for k in range(6)]
FLIP = SemanticConfig(flip=True)  # mirror-invariant embeddings


@cache
def tiles() -> tuple[Image.Image, ...]:
    """Distinct 128-pixel tiles of real photos (scikit-image's bundled data), a few per photo."""
    import skimage.data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
        photo = getattr(skimage.data, name)()[..., :3]
        for row in range(0, photo.shape[0] - 128, 160):
            for col in range(0, photo.shape[1] - 128, 200):
                tile = photo[row:row + 128, col:col + 128]
                if tile.std() > 20:
                    out.append(Image.fromarray(np.ascontiguousarray(tile)))
    return tuple(out[::2][:24])


@pytest.fixture
def photos(tmp_path) -> str:
    """Two shards: 23 distinct photo tiles, and mirrored copies of six of them (with .txt siblings)."""
    images = tiles()
    samples = [{"jpg": encode(im), "txt": b"original"} for im in images]
    keys = [f"o{k:03d}" for k in range(len(images))]
    samples += [{"jpg": encode(ImageOps.mirror(im)), "txt": b"mirrored"} for im in images[:len(MIRRORED)]]
    keys += MIRRORED
    root = tmp_path / "shards"
    write_shard(str(root / "00000.tar"), samples[:15], keys[:15])
    write_shard(str(root / "00001.tar"), samples[15:], keys[15:])
    return str(root)


def removed_ids(out) -> list[str]:
    return pq.read_table(os.path.join(out, "duplicates")).column("id").to_pylist()


def test_find_semantic_then_remove_takes_out_copies_phash_misses(photos, tmp_path):
    out = str(tmp_path / "semantic")
    assert main(["find", "--quiet", "--method", "semantic", "--flip", "--workers", "2", photos, out]) == 0
    assert removed_ids(out) == MIRRORED
    groups = pq.read_table(os.path.join(out, "groups")).to_pylist()
    assert {row["kept_id"] for row in groups if row["method"] == "semantic"} == {f"o{k:03d}" for k in range(6)}
    assert all(row["similarity"] >= 1 - 0.04 for row in groups)

    report = os.path.dirname(write_report(out))
    assert len(os.listdir(os.path.join(report, "thumbs"))) == 2 * len(MIRRORED)  # every member has its thumbnail
    page = "".join(open(os.path.join(report, "data", "f1", name)).read()
                   for name in os.listdir(os.path.join(report, "data", "f1")))  # the semantic filter's pages
    assert page.count(', "semantic", ') == len(MIRRORED)  # each mirrored copy, with its 1 - cos

    phash = find_duplicates(photos, str(tmp_path / "phash"), FindConfig(method="phash"))
    assert phash.duplicates == 0  # the perceptual hash does not see mirrored copies

    result = remove_duplicates(photos, str(tmp_path / "clean"), os.path.join(out, "duplicates"))
    assert result.removed == len(MIRRORED)
    kept = [image.image_id for shard in sorted(os.listdir(tmp_path / "clean")) if shard.endswith(".tar")
            for image in ImageReaderStage().read_shard(str(tmp_path / "clean" / shard), shard).data]
    assert kept == [f"o{k:03d}" for k in range(len(tiles()))]


def test_removal_stage_reads_the_semantic_output(photos, tmp_path):
    out = str(tmp_path / "out")
    find_semantic(photos, out, FLIP, executor=LocalExecutor(num_workers=1))
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=os.path.join(out, "duplicates"))
    stage.setup()
    batch = ImageReaderStage().read_shard(os.path.join(photos, "00001.tar"), "00001.tar")
    assert [image.image_id for image in stage.process(batch).data] == [f"o{k:03d}" for k in range(15, len(tiles()))]


def test_rerun_reuses_embeddings_until_the_shard_changes(photos, tmp_path):
    out = str(tmp_path / "out")
    executor = LocalExecutor(num_workers=1)
    find_semantic(photos, out, FLIP, executor=executor)
    table = os.path.join(out, "embeddings", "00000.tar.parquet")
    written = os.stat(table).st_mtime_ns
    find_semantic(photos, out, FLIP, executor=executor)
    assert os.stat(table).st_mtime_ns == written
    find_semantic(photos, out, executor=executor)  # without flip: other embeddings
    assert os.stat(table).st_mtime_ns != written
    written = os.stat(table).st_mtime_ns
    os.utime(os.path.join(photos, "00000.tar"), ns=(1, 1))
    find_semantic(photos, out, executor=executor)
    assert os.stat(table).st_mtime_ns != written


def test_precomputed_embeddings_give_the_same_result(photos, tmp_path):
    first = str(tmp_path / "first")
    find_semantic(photos, first, FLIP, executor=LocalExecutor(num_workers=1))
    # Curator's column names, one file
    table = pa.concat_tables([pq.read_table(os.path.join(first, "embeddings", f"0000{k}.tar.parquet"))
                              for k in range(2)]).select(["id", "embeddings"]).rename_columns(["image_id", "embedding"])
    pq.write_table(table, tmp_path / "curator.parquet")
    again = str(tmp_path / "again")
    find_semantic(photos, again, SemanticConfig(embeddings=str(tmp_path / "curator.parquet"), eps=0.04),
                  executor=LocalExecutor(num_workers=1))
    assert removed_ids(again) == removed_ids(first) == MIRRORED


def test_embedding_ids_must_match_the_input(photos, tmp_path):
    ids = [f"o{k:03d}" for k in range(len(tiles()))] + MIRRORED
    vectors = pa.array([[1.0, 0.0]] * len(ids), pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": ids[:-1] + ["stranger"], "embeddings": vectors}), tmp_path / "extra.parquet")
    with pytest.raises(EmbeddingsError, match="extra.parquet row 28: ID 'stranger' is not a sample of the input"):
        find_semantic(photos, str(tmp_path / "o1"), SemanticConfig(embeddings=str(tmp_path / "extra.parquet")))
    pq.write_table(pa.table({"id": ids[:-1], "embeddings": vectors[:-1]}), tmp_path / "short.parquet")
    with pytest.raises(EmbeddingsError, match="00001.tar: sample 'm005' has no embedding"):
        find_semantic(photos, str(tmp_path / "o2"), SemanticConfig(embeddings=str(tmp_path / "short.parquet")))


@pytest.mark.ray
def test_ray_executor_gives_the_same_result(photos, tmp_path):
    ray = pytest.importorskip("ray")
    from imagesieve.executors.ray import RayExecutor

    local = str(tmp_path / "local")
    find_semantic(photos, local, FLIP, executor=LocalExecutor(num_workers=2))
    on_ray = str(tmp_path / "ray")
    four = SemanticConfig(flip=True, n_clusters=4)
    try:
        find_semantic(photos, on_ray, four, executor=RayExecutor(num_cpus=2))
        find_semantic(photos, local + "4", four, executor=LocalExecutor(num_workers=2))
    finally:
        ray.shutdown()
    assert removed_ids(on_ray) == removed_ids(local + "4") == removed_ids(local) == MIRRORED
    assert pq.read_table(os.path.join(on_ray, "groups")).equals(pq.read_table(os.path.join(local + "4", "groups")))


def test_unreadable_image_is_listed_as_skipped(photos, tmp_path):
    write_shard(os.path.join(photos, "00002.tar"), [{"jpg": b"not an image"}], ["broken"])
    with pytest.raises(ValueError, match="00002.tar: sample 'broken'"):
        find_semantic(photos, str(tmp_path / "fail"), FLIP, executor=LocalExecutor(num_workers=1))
    out = str(tmp_path / "skip")
    summary = find_semantic(photos, out, SemanticConfig(flip=True, on_error="skip"),
                            executor=LocalExecutor(num_workers=1))
    assert summary.skipped == 1 and removed_ids(out) == MIRRORED
    assert pq.read_table(os.path.join(out, "skipped.parquet")).column("id").to_pylist() == ["broken"]


def test_cli_semantic_options(photos, tmp_path, capsys):
    embeddings = str(tmp_path / "emb.parquet")
    ids = [f"o{k:03d}" for k in range(len(tiles()))] + MIRRORED
    vectors = [[1.0, float(k)] for k in range(len(ids) - 1)] + [[0.0, 1.0]]
    pq.write_table(pa.table({"id": ids, "embeddings": pa.array(vectors, pa.list_(pa.float32()))}), embeddings)
    out = str(tmp_path / "out")
    assert main(["find", "--quiet", "--method", "semantic", "--embeddings", embeddings, "--clusters", "3",
                 "--eps", "0.001", "--keep", "easy", photos, out]) == 0
    assert "3 clusters" in capsys.readouterr().out
    assert main(["find", "--quiet", "--method", "semantic", "--embeddings", embeddings, "--eps", "1.5", photos,
                 out]) == 1
    assert "error: eps must be in (0, 1)" in capsys.readouterr().err
    assert main(["find", "--quiet", "--method", "semantic", "--embeddings", embeddings, "--clusters", "99", photos,
                 out]) == 1
    assert "--clusters 99 is more than the 29 images with embeddings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["find", "--method", "semantic", "--embeddings", embeddings, "--model", "m.onnx", photos, out])


def test_defaults_find_recompressed_resized_and_slightly_cropped_copies(tmp_path):
    """Issue 25: the easy copies are never missed at the defaults (pHash pairs the embeddings agree
    with are duplicates too), and the groups say which rule found each."""
    from imagesieve.workflows.sample_data import TRANSFORMS

    images = tiles()[:12]
    originals = [encode(im) for im in images]
    samples = [{"jpg": data} for data in originals]
    keys = [f"o{k:03d}" for k in range(len(images))]
    copies = {"q": "jpeg_q25", "c": "crop_3pct", "r": "resize_0.5", "p": "to_png"}
    for k, (prefix, name) in enumerate(copies.items()):
        data, ext = TRANSFORMS[name].apply(images[k], originals[k])
        samples.append({ext: data})
        keys.append(f"{prefix}{k:03d}")
    samples.append({"jpg": originals[5]})  # the same bytes
    keys.append("x005")
    write_shard(str(tmp_path / "shards" / "00000.tar"), samples, keys)
    out = str(tmp_path / "out")
    summary = find_semantic(str(tmp_path / "shards"), out, executor=LocalExecutor(num_workers=1))
    copy_ids = sorted(keys[len(images):])
    assert removed_ids(out) == copy_ids
    groups = {row["id"]: row for row in pq.read_table(os.path.join(out, "groups")).to_pylist()}
    assert {i: groups[i]["kept_id"] for i in copy_ids} == {"c001": "o001", "p003": "o003", "q000": "o000",
                                                           "r002": "o002", "x005": "o005"}
    assert groups["x005"]["method"] == "exact"
    assert {groups[i]["method"] for i in copy_ids} <= {"exact", "phash", "semantic"}
    assert sum(summary.by_method.values()) == len(copy_ids)
    assert os.listdir(os.path.join(out, "hashes"))  # kept for reruns, as find --method phash keeps them

    alone = str(tmp_path / "alone")  # embeddings alone: the pHash pairs are what finds some of them
    find_semantic(str(tmp_path / "shards"), alone, SemanticConfig(hash_accept=-1),
                  executor=LocalExecutor(num_workers=1))
    assert set(removed_ids(alone)) <= set(copy_ids)
    assert not os.path.exists(os.path.join(alone, "hashes"))


def test_embeddings_of_the_recipe_before_are_recomputed(photos, tmp_path):
    """A run folder made before issue 25 (a 48-pixel thumbnail at 224) is not mixed with the new recipe
    (at INPUT_SIZE): the tables record the model's identity, and a rerun recomputes them."""
    from imagesieve.pipeline.inputs import input_units
    from imagesieve.stages.embedding.embedding_writer import MODEL_KEY
    from imagesieve.stages.embedding.onnx_model import model_identity
    from imagesieve.workflows.semantic_find import INPUT_SIZE, embed_shards

    out = str(tmp_path / "out")
    executor = LocalExecutor(num_workers=1)
    find_semantic(photos, out, executor=executor)  # a run folder, then its tables as the recipe before made them
    embed_shards(input_units(photos, out), os.path.join(out, "embeddings"), SemanticConfig(), executor, False)
    table = os.path.join(out, "embeddings", "00000.tar.parquet")
    before = pq.read_schema(table).metadata[MODEL_KEY].decode()
    assert before == model_identity("default")
    find_semantic(photos, out, executor=executor)
    after = pq.read_schema(table).metadata[MODEL_KEY].decode()
    assert after == model_identity("default", input_size=INPUT_SIZE) != before


def test_distinct_sky_and_brick_tiles_are_not_duplicates_while_their_copies_are(tmp_path):
    """Issue 25: the embeddings put distinct tiles of a smooth sky, and of a repeated brick texture, within
    eps of each other; their hashes disagree, so at the defaults they stay, while a recompressed copy
    and a copy cropped to 97% of such tiles are still found."""
    from imagesieve.workflows.sample_data import TRANSFORMS, distinct_images

    tiles = dict(distinct_images())
    # two tiles of the sky above the rocket and two brick tiles: embeddings within 0.009 and 0.03 of each
    # other (rocket_r0c2 is not here: its hashes agree with rocket_r0c1's, and the defaults still merge them)
    images = [tiles[name] for name in ("rocket_r0c1", "rocket_r0c3", "brick_r1c0", "brick_r1c3")]
    originals = [encode(im) for im in images]
    samples = [{"jpg": data} for data in originals]
    keys = [f"o{k:03d}" for k in range(len(images))]
    for key, k, name in (("q000", 0, "jpeg_q60"), ("c003", 3, "crop_3pct"), ("q002", 2, "jpeg_q25"),
                         ("r001", 1, "resize_0.5")):
        data, ext = TRANSFORMS[name].apply(images[k], originals[k])
        samples.append({ext: data})
        keys.append(key)
    write_shard(str(tmp_path / "shards" / "00000.tar"), samples, keys)
    out = str(tmp_path / "out")
    find_semantic(str(tmp_path / "shards"), out, executor=LocalExecutor(num_workers=1))
    assert sorted(removed_ids(out)) == ["c003", "q000", "q002", "r001"]

    # the rule before (embeddings alone within 0.035, pHash within 14 bits) took distinct tiles for copies
    before = str(tmp_path / "before")
    find_semantic(str(tmp_path / "shards"), before, SemanticConfig(eps=0.035, hash_accept=14, hash_eps=0.15,
                                                                   eps_hash_bits=64, confirm=192),
                  executor=LocalExecutor(num_workers=1))
    assert {i for i in removed_ids(before) if i.startswith("o")}


def test_the_hash_settings_are_options_of_the_command_line(photos, tmp_path):
    """Issue 25: the rule's hash settings (pHash pairs accepted within --hash-accept bits and --hash-eps, embedding
    pairs within --eps-hash-bits, every pair under --confirm) reach the finder from the command line, and are
    recorded; the embeddings alone (--hash-accept -1, any pHash, --confirm off) still find the mirrored copies."""
    out = str(tmp_path / "loose")
    assert main(["find", "--quiet", "--method", "semantic", "--flip", "--hash-accept", "-1", "--eps-hash-bits", "64",
                 "--confirm", "off", "--hash-eps", "0.3", photos, out]) == 0
    config = json.loads(open(os.path.join(out, "summary.json")).read())["config"]
    assert (config["hash_accept"], config["eps_hash_bits"], config["confirm"], config["hash_eps"]) == (-1, 64, 192, 0.3)
    assert removed_ids(out) == MIRRORED
    with pytest.raises(SystemExit) as refused:
        main(["find", "--method", "phash", "--eps-hash-bits", "20", photos, str(tmp_path / "wrong")])
    assert refused.value.code == 2

"""find -> remove end to end on real photo shards, the output layout, cross-set mode and errors."""

from __future__ import annotations

import io
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import encode, photo_tiles
from PIL import Image

from imagesieve.cli import main
from imagesieve.executors.local import LocalExecutor
from imagesieve.images.decode import ImageDecodeError
from imagesieve.pipeline.inputs import split_tail
from imagesieve.stages.deduplication.removal import ImageDuplicatesRemovalStage
from imagesieve.tar.names import IMAGE_RULE
from imagesieve.workflows import common
from imagesieve.workflows.find import FindConfig, find_duplicates
from imagesieve.workflows.remove import remove_duplicates
from imagesieve.workflows.sample_data import make_sample_dataset


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample"))
    make_sample_dataset(root, shard_size=60)
    truth = pq.read_table(os.path.join(root, "truth.parquet")).to_pylist()
    return root, truth


def keys_in(folder: str) -> set[str]:
    return {sample["__key__"] for name in sorted(os.listdir(folder)) if name.endswith(".tar")
            for sample in wds.WebDataset(os.path.join(folder, name), shardshuffle=False)}


@pytest.mark.parametrize("method", ["phash"])
def test_find_then_remove_removes_every_planted_duplicate_and_no_original(sample, tmp_path, method):
    root, truth = sample
    found = str(tmp_path / "found")
    summary = find_duplicates(os.path.join(root, "shards"), found, FindConfig(method=method),
                              executor=LocalExecutor(2))
    planted = {row["id"] for row in truth}
    listed = set(pq.read_table(os.path.join(found, "duplicates")).column("id").to_pylist())
    assert listed == planted
    assert summary.duplicates == len(planted) and summary.by_method["exact"] >= 1

    result = remove_duplicates(os.path.join(root, "shards"), str(tmp_path / "clean"),
                               os.path.join(found, "duplicates"), executor=LocalExecutor(2))
    assert result.removed == len(planted) and result.ids_not_found == 0
    kept = keys_in(str(tmp_path / "clean"))
    assert not kept & planted
    assert {row["duplicate_of"] for row in truth} <= kept


def test_output_layout_is_the_reference_layout(sample, tmp_path):
    root, truth = sample
    find_duplicates(os.path.join(root, "shards"), str(tmp_path / "f"), FindConfig(), executor=LocalExecutor(1))
    dup_table = pq.read_table(str(tmp_path / "f" / "duplicates"))
    assert dup_table.schema == pa.schema([("id", pa.string())])
    ids = dup_table.column("id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    stage = ImageDuplicatesRemovalStage(removal_parquets_dir=str(tmp_path / "f" / "duplicates"))
    stage.setup()
    assert stage.listed_ids == len(truth)

    groups = pq.read_table(str(tmp_path / "f" / "groups")).to_pylist()
    assert {"group_id", "kept_id", "id", "method", "distance"} == set(groups[0])
    by_id = {g["id"]: g for g in groups}
    for row in truth:
        member, kept = by_id[row["id"]], by_id[row["duplicate_of"]]
        assert member["kept_id"] == row["duplicate_of"] and kept["method"] == "kept"
        assert member["group_id"] == kept["group_id"]
        assert member["method"] == ("exact" if row["transform"] == "exact_copy" else "phash")
    hashes = pq.read_table(str(tmp_path / "f" / "hashes")).column_names
    assert {"id", "shard", "width", "height", "format", "bytes_hash", "phash"} <= set(hashes)


def test_rerun_reuses_hashes(sample, tmp_path):
    root, _ = sample
    out = str(tmp_path / "f")
    find_duplicates(os.path.join(root, "shards"), out, FindConfig(), executor=LocalExecutor(1))
    stamp = {f: os.stat(os.path.join(out, "hashes", f)).st_mtime_ns for f in os.listdir(os.path.join(out, "hashes"))}
    again = find_duplicates(os.path.join(root, "shards"), out, FindConfig(threshold=4), executor=LocalExecutor(1))
    assert again.threshold == 4
    assert stamp == {f: os.stat(os.path.join(out, "hashes", f)).st_mtime_ns for f in stamp}
    find_duplicates(os.path.join(root, "shards"), out, FindConfig(method="dhash"), executor=LocalExecutor(1))
    assert "dhash" in pq.read_schema(os.path.join(out, "hashes", "00000.tar.parquet")).names


def shard(path, samples: dict[str, bytes], ext="jpg") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wds.TarWriter(str(path), encoder=False) as sink:
        for key, data in samples.items():
            sink.write({"__key__": key, ext: data, "txt": b"x"})
    return str(path)


def test_cross_set_marks_only_input_images_that_match_the_reference(tmp_path):
    tiles = photo_tiles()
    reference = shard(tmp_path / "test" / "00000.tar", {f"test{i}": encode(tiles[i]) for i in range(6)})
    train = {f"train{i}": encode(tiles[i + 10]) for i in range(8)}
    train["leak_exact"] = encode(tiles[0])
    train["leak_recompressed"] = encode(tiles[1], quality=50)
    train["leak_resized"] = encode(__import__("numpy").asarray(Image.fromarray(tiles[2]).resize((96, 96))))
    shard(tmp_path / "train" / "00000.tar", train)
    summary = find_duplicates(str(tmp_path / "train"), str(tmp_path / "f"), FindConfig(),
                              reference=reference, executor=LocalExecutor(1))
    listed = pq.read_table(str(tmp_path / "f" / "duplicates")).column("id").to_pylist()
    assert listed == ["leak_exact", "leak_recompressed", "leak_resized"]
    assert summary.duplicates == 3
    groups = {g["id"]: g for g in pq.read_table(str(tmp_path / "f" / "groups")).to_pylist()}
    assert groups["leak_resized"]["kept_id"] == "test2" and groups["leak_exact"]["method"] == "exact"


def test_exact_method_groups_same_bytes_and_same_pixels(tmp_path):
    tiles = photo_tiles()
    lossless = io.BytesIO()
    Image.fromarray(tiles[1]).save(lossless, format="WEBP", lossless=True)
    shard(tmp_path / "in" / "00000.tar", {"a": encode(tiles[0], "png"), "b": encode(tiles[0], "png"),
                                          "c": encode(tiles[1], "png"), "e": encode(tiles[2], "png")}, ext="png")
    shard(tmp_path / "in" / "00001.tar", {"d": lossless.getvalue()}, ext="webp")
    summary = find_duplicates(str(tmp_path / "in"), str(tmp_path / "f"), FindConfig(method="exact"),
                              executor=LocalExecutor(1))
    assert pq.read_table(str(tmp_path / "f" / "duplicates")).column("id").to_pylist() == ["b", "d"]
    assert summary.by_method == {"exact": 2}


def corrupt_dataset(tmp_path):
    tiles = photo_tiles()
    good = encode(tiles[0])
    return shard(tmp_path / "in" / "00000.tar", {"ok": good, "copy": good, "broken": good[:200] + b"\x00" * 50})


def test_on_error_fail_names_shard_and_sample(tmp_path):
    corrupt_dataset(tmp_path)
    with pytest.raises(ImageDecodeError, match="00000.tar: sample 'broken'"):
        find_duplicates(str(tmp_path / "in"), str(tmp_path / "f"), FindConfig(), executor=LocalExecutor(1))


def test_on_error_skip_lists_the_skipped_image_with_its_reason(tmp_path):
    corrupt_dataset(tmp_path)
    summary = find_duplicates(str(tmp_path / "in"), str(tmp_path / "f"), FindConfig(on_error="skip"),
                              executor=LocalExecutor(1))
    skipped = pq.read_table(str(tmp_path / "f" / "skipped.parquet")).to_pylist()
    assert [s["id"] for s in skipped] == ["broken"] and "broken" in skipped[0]["reason"]
    assert summary.skipped == 1 and summary.duplicates == 1


def test_the_last_shards_hashed_in_parts_give_the_tables_of_whole_shards(sample, tmp_path, monkeypatch):
    """With several workers the last shards are hashed in parts (`split_tail`), one per worker; each
    shard's table is then written from its parts, equal to the table of the shard hashed whole. Here
    with an unreadable image in a part and a shard of fewer samples than parts (an empty part)."""
    root, _ = sample
    tiles = photo_tiles()
    shutil.copytree(os.path.join(root, "shards"), tmp_path / "in")
    good = encode(tiles[0])
    shard(tmp_path / "in" / "zz" / "broken.tar", {"ok": good, "copy": good, "broken": good[:200] + b"\x00" * 50})
    shard(tmp_path / "in" / "zz" / "tiny.tar", {"t0": encode(tiles[3]), "t1": encode(tiles[4])})
    split = []  # the workers of each call
    monkeypatch.setattr(common, "split_tail", lambda tasks, n: split.append(n) or split_tail(tasks, n))
    config = FindConfig(flip=True, on_error="skip")
    whole = find_duplicates(str(tmp_path / "in"), str(tmp_path / "whole"), config, executor=LocalExecutor(1))
    parts = find_duplicates(str(tmp_path / "in"), str(tmp_path / "parts"), config, executor=LocalExecutor(3))
    assert split == [1, 3]
    assert (whole.images, whole.skipped, whole.duplicates) == (parts.images, parts.skipped, parts.duplicates)
    assert whole.skipped == 1
    tables = sorted(str(p.relative_to(tmp_path / "whole")) for p in (tmp_path / "whole").rglob("*.parquet"))
    assert {"hashes/zz/broken.tar.parquet", "hashes/zz/tiny.tar.parquet"} < set(tables)
    for name in tables:
        a, b = pq.read_table(tmp_path / "whole" / name), pq.read_table(tmp_path / "parts" / name)
        assert a.equals(b) and a.schema.metadata == b.schema.metadata, name


def test_key_repeated_across_shards_is_refused(tmp_path):
    data = encode(photo_tiles()[0])
    shard(tmp_path / "in" / "00000.tar", {"same": data})
    shard(tmp_path / "in" / "00001.tar", {"same": data})
    with pytest.raises(ValueError, match=r"unique across the dataset.*\['same'\].*00000.tar.*00001.tar"):
        find_duplicates(str(tmp_path / "in"), str(tmp_path / "f"), FindConfig(), executor=LocalExecutor(1))


def test_cli_find(sample, tmp_path, capsys):
    root, truth = sample
    assert main(["find", "--quiet", "--method", "phash", "--threshold", "8", "--keep", "resolution",
                 os.path.join(root, "shards"), str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert "duplicates" in out and "threshold 8" in out
    with pytest.raises(SystemExit) as info:
        main(["find", "--method", "nope", "x", "y"])
    assert info.value.code == 2


def test_cross_set_exact_matches_same_pixels_in_another_format(tmp_path):
    tiles = photo_tiles()
    lossless = io.BytesIO()
    Image.fromarray(tiles[4]).save(lossless, format="WEBP", lossless=True)
    reference = shard(tmp_path / "test" / "00000.tar", {"t4": lossless.getvalue()}, ext="webp")
    shard(tmp_path / "train" / "00000.tar", {"png4": encode(tiles[4], "png"), "png5": encode(tiles[5], "png")},
          ext="png")
    find_duplicates(str(tmp_path / "train"), str(tmp_path / "f"), FindConfig(method="exact"), reference=reference,
                    executor=LocalExecutor(1))
    assert pq.read_table(str(tmp_path / "f" / "duplicates")).column("id").to_pylist() == ["png4"]


def test_chance_phash_pairs_are_not_duplicates_but_copies_are(tmp_path):
    """Mosaics of distinct photo tiles: unrelated, yet some pairs fall within pHash's 10 bits by chance
    (their number grows as n^2). By default such a pair needs the two dHashes to agree too, so only the
    planted copies are listed; `--confirm off` lists the chance pairs as well."""
    import numpy as np

    from imagesieve.workflows.sample_data import distinct_images

    tiles = [image for _, image in distinct_images(64)]
    rng = np.random.default_rng(0)
    samples, planted = {}, set()
    for k in range(700):
        mosaic = Image.new("RGB", (128, 128))
        for q, pick in enumerate(rng.choice(len(tiles), 4, replace=False)):
            mosaic.paste(tiles[pick], ((q % 2) * 64, (q // 2) * 64))
        samples[f"m{k:04d}"] = encode(np.asarray(mosaic))
        if k % 35 == 0:  # a recompressed and a resized copy
            samples[f"m{k:04d}_q"] = encode(np.asarray(mosaic), quality=50)
            samples[f"m{k:04d}_r"] = encode(np.asarray(mosaic.resize((100, 100), Image.Resampling.BILINEAR)))
            planted |= {f"m{k:04d}_q", f"m{k:04d}_r"}
    shard(str(tmp_path / "in" / "00000.tar"), samples)
    listed = {}
    for name, extra in (("default", []), ("off", ["--confirm", "off"])):
        assert main(["find", "--quiet", *extra, str(tmp_path / "in"), str(tmp_path / name)]) == 0
        listed[name] = set(pq.read_table(str(tmp_path / name / "duplicates")).column("id").to_pylist())
    assert listed["default"] == planted
    assert listed["off"] > planted  # pHash alone also pairs unrelated mosaics


def test_photos_with_one_blank_mask_each_are_not_duplicates(tmp_path):
    """Six different photos, each with the same blank `KEY.alpha.png` sorted before its `KEY.jpg`: the
    photos are hashed, not the masks, so nothing is a duplicate (the mask made 5 of them 'exact')."""
    tiles, mask = photo_tiles(), encode(__import__("numpy").zeros((64, 64), "uint8"), "png")
    os.makedirs(tmp_path / "in")
    with wds.TarWriter(str(tmp_path / "in" / "00000.tar"), encoder=False) as sink:
        for i in range(6):
            sink.write({"__key__": f"{i:09d}", "alpha.png": mask, "jpg": encode(tiles[i]), "txt": b"x"})
    summary = find_duplicates(str(tmp_path / "in"), str(tmp_path / "f"), FindConfig(), executor=LocalExecutor(1))
    assert summary.images == 6 and summary.duplicates == 0
    assert pq.read_table(str(tmp_path / "f" / "duplicates")).num_rows == 0

    # a hash table made under the earlier rule (the masks hashed) is stale: a rerun hashes the photos
    hashes = str(tmp_path / "f" / "hashes" / "00000.tar.parquet")
    table = pq.read_table(hashes)
    provenance = json.loads(table.schema.metadata[b"imagesieve.provenance"])
    assert provenance["image_rule"] == IMAGE_RULE
    provenance["image_rule"] = IMAGE_RULE - 1
    for column in {"bytes_hash", "pixel_hash", "phash"} & set(table.column_names):  # as if the masks were hashed
        same = pa.array([table[column][0].as_py()] * 6, table[column].type)
        table = table.set_column(table.column_names.index(column), column, same)
    pq.write_table(table.replace_schema_metadata({b"imagesieve.provenance": json.dumps(provenance)}), hashes)
    summary = find_duplicates(str(tmp_path / "in"), str(tmp_path / "f"), FindConfig(), executor=LocalExecutor(1))
    assert summary.duplicates == 0


def test_an_embedding_table_of_another_image_rule_is_not_current(tmp_path):
    """Embedding tables record the image rule too: one made when another member was each sample's image
    is embedded again."""
    from imagesieve.stages.embedding.embedding_writer import FINGERPRINT_KEY, IMAGE_RULE_KEY, MODEL_KEY, is_current

    path = str(tmp_path / "e.parquet")
    for rule, current in ((IMAGE_RULE, True), (IMAGE_RULE - 1, False), (None, False)):
        meta = {FINGERPRINT_KEY: b"f", MODEL_KEY: b"m"}
        if rule is not None:
            meta[IMAGE_RULE_KEY] = str(rule).encode()
        pq.write_table(pa.table({"id": ["a"]}).replace_schema_metadata(meta), path)
        assert is_current(path, "f", "m") is current

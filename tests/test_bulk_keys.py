"""The per-shard passes hold to their exact references: key hashes to the xxh64 values the ID index
stores, the compiled grouping of members into samples to the one-by-one rule, and the mapped copy
of kept byte ranges to the source bytes (also across its chunk boundaries, and on a shard that
shrank under it)."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from imagesieve.tar.grouping import _group_members_one_by_one
from imagesieve.tar.key_hash import hash_strings
from imagesieve.tar.mapped import MappedSource
from imagesieve.tar.names import ShardError, image_extension
from imagesieve.tar.read import read_table
from imagesieve.tar.table import ShardTable
from imagesieve.tar.write import AtomicShardWriter


def test_key_hashes_are_the_values_id_indexes_were_built_with():
    """xxh64 (seed 0) of the UTF-8 bytes, the same values as the compiled kernel gave before the xxhash
    package replaced it (issue 24; recorded from it): an ID index built before still finds every key."""
    rng = np.random.default_rng(0)
    texts = ["", "a", "00001234", "000012345", "héllo wörld ✓", "dir/sub/key"]
    texts += [bytes(rng.integers(0, 128, n, dtype=np.uint8)).decode("ascii") for n in range(300) for _ in range(3)]
    texts += ["x" * 5000]  # every length to 300 bytes, three times, and a long one
    hashes = hash_strings(pa.array(texts))
    assert hashes[:6].tolist() == [0xef46db3751d8e999, 0xd24ec4f1a98c6e5b, 0x02cfdbad903a83b8, 0x68c1449ac1911cd0,
                                   0x34d9919c86f55ac4, 0x97b8f2485838c7b9]
    assert xxhash.xxh64_intdigest(hashes.astype("<u8").tobytes()) == 0x83daff283b9dee77  # all 907 of them
    assert hash_strings(pa.array(texts).slice(7, 50)).tolist() == hashes[7:57].tolist()  # a slice's offsets
    assert hash_strings(pa.array([], pa.string())).tolist() == []


NAME_PART = st.sampled_from(["a", "b", "k1", "0001", "x.y", ".hid", "dir/", "dir/a", "d.d/", "é"])
EXT = st.sampled_from(["jpg", "JPEG", "txt", "json", "png", "PNG", "webp", "cls.txt", "tar.webp", "alpha.png",
                       "depth.PNG", ".png", "png.txt", "", "x"])


@st.composite
def member_names(draw) -> list[str]:
    """Names as shards hold them: mostly well-formed samples, sometimes loose files, repeats and oddities."""
    names = []
    for _ in range(draw(st.integers(0, 12))):
        key = "".join(draw(st.lists(NAME_PART, min_size=1, max_size=3)))
        for ext in draw(st.lists(EXT, min_size=1, max_size=3)):
            names.append(f"{key}.{ext}" if ext else key)
    if names and draw(st.booleans()):
        names.insert(draw(st.integers(0, len(names))), draw(st.sampled_from(["README", "._a.jpg", ""])))
    return names


def _reference(names: list[str]):
    """What the one-by-one rule says: (sample_of, keys, image member per sample: `names.image_extension`'s
    choice among the sample's extensions), or the error it raises."""
    try:
        sample_of, keys, exts = _group_members_one_by_one("s.tar", names)
    except ShardError as exc:
        return str(exc)
    members: list[list[int]] = [[] for _ in keys]
    for j, sample in enumerate(sample_of.tolist()):
        if sample >= 0:
            members[sample].append(j)
    image = []
    for js in members:  # the stated rule, applied to each sample's extensions in tar order
        ext = image_extension([exts[j] for j in js])
        image.append(-1 if ext is None else next(j for j in js if exts[j] == ext))
    return sample_of.tolist(), keys, image


@settings(max_examples=300, deadline=None)
@given(names=member_names())
def test_grouping_equals_the_one_by_one_rule(names):
    zeros = np.zeros(len(names), np.int64)
    want = _reference(names)
    if isinstance(want, str):
        with pytest.raises(ShardError) as caught:
            ShardTable("s.tar", pa.array(names, pa.large_string()), zeros, zeros, zeros)
        assert str(caught.value) == want
        return
    table = ShardTable("s.tar", pa.array(names, pa.large_string()), zeros, zeros, zeros)
    assert (table.sample_of.tolist(), table.keys, table.image_member.tolist()) == want
    python = ShardTable("s.tar", pa.array(names, pa.large_string()), zeros, zeros, zeros, compiled=False)
    assert (python.sample_of.tolist(), python.keys, python.image_member.tolist()) == want  # the Python path too
    assert table.key_hashes.tolist() == [xxhash.xxh64_intdigest(k.encode()) for k in table.keys]


def test_directory_entries_belong_to_no_sample_even_without_a_slash():
    names = pa.array(["d.d", "d.d/a.jpg", "d.d/a.txt"], pa.large_string())
    zeros = np.zeros(3, np.int64)
    table = ShardTable("s.tar", names, zeros, zeros, zeros, is_dir=np.array([True, False, False]))
    assert table.sample_of.tolist() == [-1, 0, 0] and table.keys == ["d.d/a"]
    assert table.names[0] == "d.d/"


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_mapped_copy_is_exact_across_chunk_boundaries(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    members = [(f"{i:04d}.{ext}", rng.integers(0, 256, int(rng.integers(0, 9000)), dtype=np.uint8).tobytes())
               for i in range(120) for ext in ("jpg", "txt")]
    _tar(tmp_path / "in.tar", members)
    monkeypatch.setattr(MappedSource, "CHUNK", 1 << 16)  # many chunks, ranges straddling them
    table = read_table(str(tmp_path / "in.tar"))
    keep = rng.random(len(table.header_offsets)) < 0.7
    with AtomicShardWriter(str(tmp_path / "out.tar")) as writer:
        writer.add_ranges(table.shard, table.header_offsets[keep], table.ends[keep])
    with tarfile.open(tmp_path / "out.tar") as tar:
        got = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert got == [m for m, k in zip(members, keep, strict=True) if k]


def test_a_shard_that_shrank_before_the_copy_is_an_error_not_a_crash(tmp_path):
    _tar(tmp_path / "in.tar", [(f"{i}.jpg", os.urandom(5000)) for i in range(20)])
    table = read_table(str(tmp_path / "in.tar"))
    os.truncate(tmp_path / "in.tar", 30_000)
    writer = AtomicShardWriter(str(tmp_path / "out.tar"))
    with pytest.raises(ShardError, match="shrank"):
        writer.add_ranges(table.shard, table.header_offsets, table.ends)
        writer.commit()
    writer.abort()
    assert not os.listdir(tmp_path / ".") or "out.tar" not in os.listdir(tmp_path)


@pytest.mark.parametrize("on_disk", [True, False])
def test_hash_collisions_are_settled_by_the_ids_bytes(tmp_path, monkeypatch, on_disk):
    """IDs forced to share hashes: only an ID stored byte for byte is found, wherever it sits in its run,
    by the compiled check and by the Python one."""
    from imagesieve.matching import id_index
    from imagesieve.matching.id_index import IdIndex

    forged = IdIndex(np.array([5, 5, 5, 9, 11], np.uint64), np.array([0, 1, 3, 4, 5, 8], np.uint32),
                     np.frombuffer(b"abbcdccc", np.uint8))  # a, bb, c share hash 5
    if on_disk:
        forged.save_files(str(tmp_path))
        forged = IdIndex.load(str(tmp_path))
    query = np.array([5, 5, 9, 5, 5, 11, 11, 12], np.uint64)
    ids = pa.array(["c", "zz", "d", "bb", "d", "ccc", "cc", "a"])
    want = [True, False, True, True, False, True, False, False]
    assert forged.contains_hashed(query, ids).tolist() == want
    monkeypatch.setattr(id_index, "compiled_pays", lambda items: False)  # the Python path, for a few hits
    assert forged.contains_hashed(query, ids).tolist() == want

"""Both tar readers (`tarfile`, read strictly; the compiled bulk parser) against Python's `tarfile` alone,
on valid and corrupted tars.

Valid tars of every format tarfile writes (ustar, GNU, PAX; long and non-ASCII names,
directories, empty members) must list exactly what tarfile lists. A corrupted tar (a flipped
byte, a cut) must either be refused or list exactly what tarfile lists: never a silent misreading.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagesieve.tar.headers import parse_headers
from imagesieve.tar.listing import list_members
from imagesieve.tar.names import ShardError
from imagesieve.tar.read import ShardReader, _table_from_entries, _table_from_headers, read_table

NAME_PART = st.text(alphabet=st.sampled_from("abcXYZ019_-é日"), min_size=1, max_size=12)
MEMBER = st.tuples(st.lists(NAME_PART, min_size=1, max_size=3), st.sampled_from(["jpg", "txt", "json", "tar.gz"]),
                   st.integers(0, 1500), st.booleans())
FORMATS = st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])

pytestmark = pytest.mark.usefixtures("both_tar_parsers")


def make_tar(members: list, fmt: int, long_name: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for k, (parts, ext, size, is_dir) in enumerate(members):
            name = "/".join(parts) + f"{k}.{ext}"
            if long_name and k == 0:
                name = "d" * 90 + "/" + "n" * 40 + f"{k}.{ext}"  # past the 100-byte name field
            if is_dir:
                info = tarfile.TarInfo("/".join(parts) + f"{k}")
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([k % 251]) * size))
    return buffer.getvalue()


def tarfile_listing(data: bytes) -> list[tuple[str, int, int]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isreg()]


def our_listing(path) -> list[tuple[str, int, int]]:
    return our_listing_of(read_table(str(path)))


def our_listing_of(table) -> list[tuple[str, int, int]]:
    """Regular members (directory entries, kept as members of no sample named "dir/", left out)."""
    return [(n, int(o), int(s)) for n, o, s in zip(table.names, table.data_offsets, table.sizes, strict=True)
            if not n.endswith("/")]


def write(tmp_path, data: bytes, name: str = "t.tar"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(MEMBER, min_size=1, max_size=12), fmt=FORMATS, long_name=st.booleans())
def test_valid_tars_list_exactly_what_tarfile_lists(tmp_path, members, fmt, long_name):
    if fmt == tarfile.USTAR_FORMAT and (long_name or any(ord(c) > 127 for m in members for p in m[0] for c in p)):
        return  # ustar cannot hold these names
    data = make_tar(members, fmt, long_name)
    path = write(tmp_path, data)
    assert our_listing(path) == tarfile_listing(data)
    with open(path, "rb") as f:
        bulk = parse_headers(f.fileno(), len(data))
    if bulk is not None:  # the compiled path took it: it must agree with the tarfile listing too
        fast, slow = _table_from_headers(str(path), bulk), _table_from_entries(str(path), list_members(str(path)))
        assert (fast.names, fast.header_offsets.tolist(), fast.data_offsets.tolist(), fast.sizes.tolist()) == \
            (slow.names, slow.header_offsets.tolist(), slow.data_offsets.tolist(), slow.sizes.tolist())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(MEMBER, min_size=1, max_size=8), fmt=FORMATS, where=st.floats(0, 1),
       value=st.integers(0, 255), cut=st.booleans())
def test_a_corrupted_tar_is_refused_or_read_exactly_as_tarfile_reads_it(tmp_path, members, fmt, where, value, cut):
    if fmt == tarfile.USTAR_FORMAT and any(ord(c) > 127 for m in members for p in m[0] for c in p):
        return
    data = bytearray(make_tar(members, fmt, False))
    at = int(where * (len(data) - 1))
    if cut:
        data = data[:at]
    else:
        data[at] = value
    path = write(tmp_path, bytes(data))
    try:
        ours = our_listing(path)
    except ShardError:
        return  # refused: fine, whatever tarfile thinks
    assert ours == tarfile_listing(bytes(data))


def test_a_shard_larger_than_one_batch_of_rows_is_read_whole(tmp_path):
    """The compiled loop fills arrays of at most 65,536 rows, then resumes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for k in range(70_000):
            info = tarfile.TarInfo(f"{k:06d}.txt")
            tar.addfile(info, io.BytesIO(b""))
    path = write(tmp_path, buffer.getvalue())
    table = read_table(str(path))
    assert len(table) == 70_000 and table.keys[-1] == "069999"


def test_a_newline_in_a_member_name_takes_the_exact_path(tmp_path):
    data = make_tar([(["a\nb"], "jpg", 3, False), (["c"], "txt", 2, False)], tarfile.GNU_FORMAT, False)
    path = write(tmp_path, data)
    assert our_listing(path) == tarfile_listing(data)


@pytest.mark.parametrize("damage", ["checksum", "size past end", "garbage after end"])
def test_damage_is_named_with_its_offset(tmp_path, damage):
    data = bytearray(make_tar([(["a"], "jpg", 700, False), (["b"], "txt", 10, False)], tarfile.GNU_FORMAT, False))
    second = 512 + 1024  # the second header
    if damage == "checksum":
        data[second + 10] ^= 1
        expected = f"bad header checksum at byte {second}"
    elif damage == "size past end":
        data = data[:second + 512 + 5]
        expected = f"the member at byte {second} ends past the end of the file"
    else:
        data += b"junk" + bytes(508)
        expected = "data after the end-of-archive marker"
    with pytest.raises(ShardError, match=expected):
        read_table(str(write(tmp_path, bytes(data))))


def _set_checksum(data: bytearray, at: int, field: bytes) -> None:
    data[at + 148:at + 156] = field


def test_a_checksum_with_garbage_after_its_digits_is_refused(tmp_path):
    """Found by a hostile pass: six right digits then 0xff passed the vectorised check (tarfile stops
    there, GNU tar skips the header): damage, refused."""
    data = bytearray(make_tar([(["a"], "jpg", 700, False), (["b"], "txt", 10, False)], tarfile.USTAR_FORMAT, False))
    second = 512 + 1024
    block = bytes(data[second:second + 148]) + b" " * 8 + bytes(data[second + 156:second + 512])
    _set_checksum(data, second, f"{sum(block):06o}".encode() + b"\xff\x00")
    with pytest.raises(ShardError, match=f"bad header checksum at byte {second}"):
        read_table(str(write(tmp_path, bytes(data))))


def test_a_directory_entry_with_data_is_refused(tmp_path):
    """tarfile and GNU tar skip no data after a directory entry, so a member hidden in it would be a
    sample to them and none to a reader that skips it: such a shard is refused."""
    hidden = io.BytesIO()
    with tarfile.open(fileobj=hidden, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("secret.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    hidden_member = hidden.getvalue()[:1024]
    directory = tarfile.TarInfo("d/")
    directory.type, directory.size = tarfile.DIRTYPE, len(hidden_member)
    data = directory.tobuf(tarfile.USTAR_FORMAT) + hidden_member + bytes(1024)
    assert "secret.jpg" in tarfile.open(fileobj=io.BytesIO(data)).getnames()
    with pytest.raises(ShardError, match="directory entry at byte 0 has a non-zero size"):
        read_table(str(write(tmp_path, data)))


def test_a_reader_loads_the_compiled_parser_once_tarfile_has_listed_enough(tmp_path, monkeypatch):
    from imagesieve.tar import read

    path = str(write(tmp_path, make_tar([(["a"], "jpg", 10, False), (["a"], "txt", 3, False)], tarfile.GNU_FORMAT,
                                        False)))
    compiled = []
    monkeypatch.setattr(read, "TARFILE_MEMBERS", 3)
    monkeypatch.setattr(read, "_parse_compiled", lambda *args: compiled.append(1) or parse_headers(*args))
    reader = ShardReader()
    listings = [our_listing_of(read_table(path, reader)) for _ in range(3)]
    assert compiled == [1, 1] and reader.by_tarfile == 3  # one read by tarfile; the second would pass the count
    assert listings[0] == listings[1] == listings[2] == tarfile_listing(Path(path).read_bytes())
    read_table(path)  # a reader of its own: tarfile again, for a shard under the count
    assert compiled == [1, 1]


def _header(name: str, data: bytes = b"", fmt: int = tarfile.USTAR_FORMAT) -> bytearray:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return bytearray(info.tobuf(fmt)[-512:])


def _member(block: bytearray, data: bytes = b"") -> bytes:
    """A member from a header edited by hand: its checksum made right again, its data padded."""
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + data + bytes(-len(data) % 512)


def _pax(records: bytes, kind: bytes = tarfile.XHDTYPE) -> bytes:
    header = _header("././@PaxHeader", records)
    header[156:157] = kind
    return _member(header, records)


def _edited(name: str, data: bytes, at: slice, value: bytes, fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    header = _header(name, data, fmt)
    header[at] = value
    return _member(header, data)


END = bytes(1024)
FILE = _member(_header("b.jpg", b"x"), b"x")

REFUSED = {  # what tarfile alone would read some way (a member fewer, a name from garbage, ...), and why refused
    "PAX records followed by garbage": (_pax(b"16 path=a.jpg\nGARBAGE") + FILE + END, "malformed PAX header at byte 0"),
    "a PAX path not in UTF-8": (_pax(b"15 path=\xff.jpg\n") + FILE + END, "malformed PAX header at byte 0"),
    "an extended header, then the end": (_pax(b"16 path=a.jpg\n") + END,
                                         "an extended header at byte 0 is followed by the end of the archive"),
    "a negative base-256 size": (_edited("a.jpg", b"", slice(124, 136), b"\xff" * 11 + b"\xfc", tarfile.GNU_FORMAT)
                                 + FILE + END, "the header at byte 0 has a negative size"),
    "a Solaris X header": (_edited("a.jpg", b"abc", slice(156, 157), b"X") + FILE + END, "unknown type b'X'"),
    "an old-style directory with data": (_edited("d/", b"hidden", slice(156, 157), b"\0") + FILE + END,
                                         "the directory entry at byte 0 has a non-zero size"),
    "a partial block after a member": (FILE + bytes(100), "the file ends inside the header at byte 1024"),
    "a name not in UTF-8": (_edited("a.jpg", b"abc", slice(0, 1), b"\xff") + END, r"member name b'\\xff.jpg"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_what_tarfile_alone_would_let_through_is_refused_by_both_readers(tmp_path, case):
    data, expected = REFUSED[case]
    with pytest.raises(ShardError, match=f"corrupt tar \\(.*{expected}"):
        read_table(str(write(tmp_path, data)))


ACCEPTED = {  # read alike by both readers: (tar, names, where each member's headers start)
    "PAX global headers, first and last": (_pax(b"17 comment=first\n", tarfile.XGLTYPE) + FILE
                                           + _pax(b"16 comment=last\n", tarfile.XGLTYPE) + END,
                                           ["", "b.jpg", ""], [0, 1024, 2048]),
    "an old-style directory": (_edited("d/", b"", slice(156, 157), b"\0") + FILE + END, ["d/", "b.jpg"], [0, 512]),
    "a GNU header with bytes where ustar has a prefix": (_edited("a.jpg", b"abc", slice(345, 356), b"14000000000",
                                                                tarfile.GNU_FORMAT) + END, ["a.jpg"], [0]),
    "a time that is no number (neither reader reads it)": (_edited("a.jpg", b"abc", slice(136, 148), b"garbage!!!\0\0")
                                                           + FILE + END, ["a.jpg", "b.jpg"], [0, 1024]),
    "an end block, then a partial block of zeros": (FILE + bytes(612), ["b.jpg"], [0]),
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_odd_but_sound_tars_are_read_alike_by_both_readers(tmp_path, case):
    data, names, offsets = ACCEPTED[case]
    table = read_table(str(write(tmp_path, data)))
    assert (table.names, table.header_offsets.tolist()) == (names, offsets)


@pytest.mark.parametrize("damage", ["a damaged second header", "garbage after the end"])
def test_a_compressed_shard_is_refused_where_tarfile_alone_would_cut_it_short(tmp_path, damage):
    import gzip

    data = bytearray(make_tar([(["a"], "jpg", 700, False), (["b"], "txt", 10, False)], tarfile.GNU_FORMAT, False))
    if damage == "a damaged second header":
        data[1536 + 10] ^= 1
    else:
        data[-100] = 1
    path = write(tmp_path, gzip.compress(bytes(data)), "t.tar.gz")
    assert tarfile.open(path).getnames() == ["a0.jpg", "b1.txt"][:1 if damage == "a damaged second header" else 2]
    with pytest.raises(ShardError, match="t.tar.gz: corrupt tar \\((bad header checksum at byte 1536|data after the "
                                         "end-of-archive marker)"):
        read_table(str(path))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(MEMBER, min_size=1, max_size=6), fmt=FORMATS, block=st.integers(0, 50),
       at=st.integers(0, 511), value=st.sampled_from([0, 32, 48, 55, 0x80, 0xFF, 0x41, 0x2F]))
def test_a_header_edited_with_a_right_checksum_is_read_alike_by_both_readers(tmp_path, monkeypatch, members, fmt,
                                                                            block, at, value):
    """Past the checksum, every field: both readers refuse the tar or list the same members."""
    from imagesieve.tar import read

    if fmt == tarfile.USTAR_FORMAT and any(ord(c) > 127 for m in members for p in m[0] for c in p):
        return
    data = bytearray(make_tar(members, fmt, False))
    start = block % (len(data) // 512) * 512
    data[start + at] = value
    _member(data[start:start + 512])  # (its checksum made right)
    data[start + 148:start + 156] = _member(data[start:start + 512])[148:156]
    path = str(write(tmp_path, bytes(data)))
    seen = []
    for count in (10**12, 0):  # tarfile, then the compiled parser
        monkeypatch.setattr(read, "TARFILE_MEMBERS", count)
        try:
            table = read_table(path)
            seen.append((table.names, table.header_offsets.tolist(), table.data_offsets.tolist(), table.sizes.tolist()))
        except ShardError:
            seen.append("refused")
    assert seen[0] == seen[1]

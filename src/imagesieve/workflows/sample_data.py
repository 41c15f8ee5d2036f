"""A small dataset of real photographs with planted duplicates, made offline from registry packages.

Sources: the photos bundled in scikit-image's wheel and scikit-learn's two sample images (install
with `pip install imagesieve[sample]`). Large photos are cut into non-overlapping tiles, flat tiles
(sky, black borders) are dropped, and each tile is one distinct image. Duplicates are planted as
known transforms of chosen originals, and the truth is written beside the shards.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from imagesieve.storage.runfolder import write_bytes_atomic

SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "clock", "cell")
MIN_TILE_STD = 12.0  # tiles flatter than this (sky, borders) are not distinct images


def load_photos() -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB uint8 array) of every bundled real photograph."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise ImportError("the sample photos come from scikit-image and scikit-learn: "
                          "pip install 'imagesieve[sample]'") from exc
    for name in SKIMAGE_PHOTOS:
        yield name, _to_rgb(getattr(skimage.data, name)())
    bunch = load_sample_images()
    for filename, image in zip(bunch.filenames, bunch.images, strict=True):
        yield os.path.splitext(os.path.basename(filename))[0], _to_rgb(image)


def _to_rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def distinct_images(tile: int = 128, photos: Iterable[tuple[str, np.ndarray]] | None = None
                    ) -> list[tuple[str, Image.Image]]:
    """Non-overlapping tiles of every photo (the bundled ones, or `photos`), flat ones dropped: many
    distinct real images."""
    out = []
    for name, photo in load_photos() if photos is None else photos:
        height, width = photo.shape[:2]
        for row in range(height // tile):
            for col in range(width // tile):
                crop = photo[row * tile:(row + 1) * tile, col * tile:(col + 1) * tile]
                if crop.std() >= MIN_TILE_STD:
                    out.append((f"{name}_r{row}c{col}", Image.fromarray(crop)))
    return out


def photo_crops(n: int, sides: tuple[int, ...] = (128, 160, 192, 256, 320, 384, 512, 640, 768),
                other_formats: float = 0.03, seed: int = 0) -> Iterator[tuple[bytes, str]]:
    """n (encoded bytes, extension) crops of the bundled photos (scaled up 2x, so the larger sides fit),
    each side drawn from `sides`: mostly JPEG at quality 75-95, a fraction `other_formats` PNG and
    WebP, like the images of a web crawl. For benchmarks and tests of the hash path."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.fromarray(p).resize((p.shape[1] * 2, p.shape[0] * 2), Image.Resampling.BICUBIC))
              for _, p in load_photos()]
    for i in range(n):
        photo = photos[i % len(photos)]
        height, width = (min(int(rng.choice(sides)), photo.shape[k]) for k in (0, 1))
        y, x = int(rng.integers(photo.shape[0] - height + 1)), int(rng.integers(photo.shape[1] - width + 1))
        crop = Image.fromarray(photo[y:y + height, x:x + width])
        draw = rng.random()
        if draw < other_formats / 2:
            yield encode(crop, "png"), "png"
        elif draw < other_formats:
            yield encode(crop, "webp"), "webp"
        else:
            yield encode(crop, quality=int(rng.integers(75, 96))), "jpg"


def encode(image: Image.Image, fmt: str = "jpeg", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format=fmt.upper())
    return buffer.getvalue()


@dataclass(frozen=True)
class Transform:
    """A known change to an image."""

    name: str
    apply: Callable[[Image.Image, bytes], tuple[bytes, str]]  # (image, original jpeg) -> (bytes, ext)


def _resized(scale: float) -> Callable[[Image.Image, bytes], tuple[bytes, str]]:
    def apply(image: Image.Image, _: bytes) -> tuple[bytes, str]:
        size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
        return encode(image.resize(size, Image.Resampling.BICUBIC)), "jpg"
    return apply


def _cropped(fraction: float) -> Callable[[Image.Image, bytes], tuple[bytes, str]]:
    def apply(image: Image.Image, _: bytes) -> tuple[bytes, str]:
        dx, dy = round(image.width * fraction / 2), round(image.height * fraction / 2)
        return encode(image.crop((dx, dy, image.width - dx, image.height - dy))), "jpg"
    return apply


def _rotated(degrees: float) -> Callable[[Image.Image, bytes], tuple[bytes, str]]:
    def apply(image: Image.Image, _: bytes) -> tuple[bytes, str]:
        return encode(image.convert("RGB").rotate(degrees, Image.Resampling.BICUBIC)), "jpg"  # black corners
    return apply


def _caption_bar(share: float) -> Callable[[Image.Image, bytes], tuple[bytes, str]]:
    """A white bar with black text over the bottom `share` of the image, as meme and stock sites add."""
    def apply(image: Image.Image, _: bytes) -> tuple[bytes, str]:
        out = image.convert("RGB")
        draw = ImageDraw.Draw(out)
        top = out.height - round(out.height * share)
        draw.rectangle((0, top, out.width, out.height), fill=(255, 255, 255))
        draw.text((4, top + 2), "photo: all rights reserved", fill=(0, 0, 0))
        return encode(out), "jpg"
    return apply


TRANSFORMS: dict[str, Transform] = {t.name: t for t in [
    Transform("exact_copy", lambda image, original: (original, "jpg")),
    Transform("resize_0.5", _resized(0.5)),
    Transform("resize_1.5", _resized(1.5)),
    Transform("jpeg_q30", lambda image, _: (encode(image, quality=30), "jpg")),
    Transform("jpeg_q60", lambda image, _: (encode(image, quality=60), "jpg")),
    Transform("to_png", lambda image, _: (encode(image, "png"), "png")),
    Transform("to_webp", lambda image, _: (encode(image, "webp"), "webp")),
    Transform("crop_5pct", _cropped(0.05)),
    Transform("crop_10pct", _cropped(0.10)),
    Transform("brightness_1.2", lambda image, _: (encode(ImageEnhance.Brightness(image).enhance(1.2)), "jpg")),
    Transform("hflip", lambda image, _: (encode(ImageOps.mirror(image)), "jpg")),
    # the copy-detection set (benchmarks/bench_copy.py): milder and harder edits than the above
    Transform("jpeg_q25", lambda image, _: (encode(image, quality=25), "jpg")),
    Transform("brightness_1.12", lambda image, _: (encode(ImageEnhance.Brightness(image).enhance(1.12)), "jpg")),
    Transform("crop_3pct", _cropped(0.03)),
    Transform("crop_20pct", _cropped(0.20)),
    Transform("rotate_8", _rotated(8)),
    Transform("caption_15pct", _caption_bar(0.15)),
    Transform("saturation_1.6", lambda image, _: (encode(ImageEnhance.Color(image).enhance(1.6)), "jpg")),
]}
# the transforms of the perceptual-hash benchmarks (bench_find, bench_semantic), as they were measured
HASH_TRANSFORMS = ("exact_copy", "resize_0.5", "resize_1.5", "jpeg_q30", "jpeg_q60", "to_png", "to_webp",
                   "crop_5pct", "crop_10pct", "brightness_1.2", "hflip")
# the copy-detection set: easy edits, and the hard ones pHash and embeddings miss
COPY_EASY = ("resize_0.5", "jpeg_q25", "to_png", "brightness_1.12", "crop_3pct")
COPY_HARD = ("crop_20pct", "hflip", "rotate_8", "caption_15pct", "saturation_1.6")
SAMPLE_TRANSFORMS = ("exact_copy", "resize_0.5", "jpeg_q60", "to_png", "to_webp")


def shard_bytes(samples: list[dict[str, bytes]], keys: list[str]) -> bytes:
    """A WebDataset tar: KEY.<ext> members in order, fixed mtime so the bytes are reproducible."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in zip(keys, samples, strict=True):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_shard(path: str, samples: list[dict[str, bytes]], keys: list[str]) -> None:
    write_bytes_atomic(shard_bytes(samples, keys), path)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def refuse_other_files(out_dir: str, files: dict[str, bytes]) -> None:
    """The sample is written over nothing but itself: a file it would write that holds other bytes (a
    user's dataset, a run's clean shards), or a file in its shards folder it would not write (read as
    part of the sample by the next command), is refused, naming it, before anything is written. A rerun
    of the same command finds its own bytes and writes them again."""
    shards = os.path.join(out_dir, "shards")
    others = [os.path.join(shards, name) for name in sorted(os.listdir(shards))
              if os.path.join("shards", name) not in files] if os.path.isdir(shards) else []
    for rel, data in files.items():
        path = os.path.join(out_dir, rel)
        if os.path.islink(path) or (os.path.lexists(path) and not _holds(path, data)):
            others.append(path)
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ValueError(f"{out_dir} already holds files other than this sample's ({shown}); imagesieve never "
                         "replaces files it did not create: choose a new or empty folder")


def _holds(path: str, data: bytes) -> bool:
    """Whether `path` is a regular file with these contents (a Parquet file: this table)."""
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    if not path.endswith(".parquet"):
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    try:
        return pq.read_table(path).equals(pq.read_table(pa.BufferReader(data)))
    except (OSError, pa.ArrowException):
        return False


def make_sample_dataset(out_dir: str, shard_size: int = 100, duplicate_fraction: float = 0.2,
                        transforms: tuple[str, ...] = SAMPLE_TRANSFORMS, seed: int = 0) -> dict[str, int]:
    """Write `out_dir/shards/*.tar` (originals + planted duplicates, shuffled), `out_dir/truth.parquet`
    (every planted copy with its original and transform) and `out_dir/planted/ids.parquet` (the
    planted copies' IDs in an `id` column, ready for `imagesieve remove`)."""
    rng = np.random.default_rng(seed)
    originals = distinct_images()
    entries = []  # (source name, image bytes, ext, duplicate_of, transform)
    jpegs = {}
    for name, image in originals:
        jpegs[name] = encode(image)
        entries.append((name, jpegs[name], "jpg", None, None))
    n_dups = round(len(originals) * duplicate_fraction)
    images = dict(originals)
    for pick in rng.choice(len(originals), size=n_dups, replace=False):
        name = originals[pick][0]
        transform = TRANSFORMS[transforms[int(rng.integers(len(transforms)))]]
        data, ext = transform.apply(images[name], jpegs[name])
        entries.append((name, data, ext, name, transform.name))
    order = rng.permutation(len(entries))
    # as in a crawl, a copy shows up after its original: swap the two where the shuffle put it first
    position = {entry: pos for pos, entry in enumerate(order.tolist())}
    original_index = {entries[i][0]: i for i in range(len(entries)) if entries[i][3] is None}
    for i, entry in enumerate(entries):
        if entry[3] is not None and position[i] < position[original_index[entry[3]]]:
            a, b = position[i], position[original_index[entry[3]]]
            order[a], order[b] = order[b], order[a]
            position[i], position[original_index[entry[3]]] = b, a
    keys = {i: f"{rank:09d}" for rank, i in enumerate(order)}
    key_of_original = {entries[i][0]: keys[i] for i in range(len(entries)) if entries[i][3] is None}

    files: dict[str, bytes] = {}
    truth = []
    for shard_no, start in enumerate(range(0, len(order), shard_size)):
        chunk = order[start:start + shard_size]
        samples = []
        for i in chunk:
            source, data, ext, dup_of, transform = entries[i]
            caption = f"a tile of the photo {source.split('_r')[0]}"
            meta = {"source": source, "key": keys[i]}
            samples.append({ext: data, "txt": caption.encode(), "json": json.dumps(meta).encode()})
            if dup_of is not None:
                truth.append({"id": keys[i], "duplicate_of": key_of_original[dup_of], "transform": transform})
        files[os.path.join("shards", f"{shard_no:05d}.tar")] = shard_bytes(samples, [keys[i] for i in chunk])
    table = pa.Table.from_pylist(truth, schema=pa.schema([("id", pa.string()), ("duplicate_of", pa.string()),
                                                          ("transform", pa.string())]))
    files["truth.parquet"] = parquet_bytes(table)
    files[os.path.join("planted", "ids.parquet")] = parquet_bytes(table.select(["id"]))
    refuse_other_files(out_dir, files)
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
        write_bytes_atomic(data, os.path.join(out_dir, rel))
    return {"originals": len(originals), "duplicates": len(truth), "samples": len(entries),
            "shards": -(-len(entries) // shard_size)}

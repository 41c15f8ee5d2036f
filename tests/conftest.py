"""Fixtures: tiny real shards (real photo bytes, written by webdataset's TarWriter) in tmp_path."""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image


@pytest.fixture(params=["tarfile", "compiled parser"])
def both_tar_parsers(request, monkeypatch):
    """Run a test with each tar reader, and so each grouping of members into samples (tables listed by
    tarfile are grouped member by member, the compiled parser's by `grouping_kernel`). A `ShardReader`
    lists with tarfile until it has listed `TARFILE_MEMBERS` members: a count no shard reaches keeps it
    there, 0 takes the compiled parser at once, also in workflows."""
    from imagesieve.tar import read

    monkeypatch.setattr(read, "TARFILE_MEMBERS", 10**12 if request.param == "tarfile" else 0)
    return request.param


@cache
def photo_tiles() -> tuple[np.ndarray, ...]:
    """Distinct 64x64 RGB tiles of real photos (scikit-image's bundled data)."""
    import skimage.data

    tiles = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photo = getattr(skimage.data, name)()
        for row in range(0, photo.shape[0] - 64, 96):
            for col in range(0, photo.shape[1] - 64, 96):
                tile = photo[row:row + 64, col:col + 64]
                if tile.std() > 12:
                    tiles.append(np.ascontiguousarray(tile))
    return tuple(tiles)


def encode(array: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    kwargs = {"quality": quality} if fmt in ("jpeg", "webp") else {}
    Image.fromarray(array).save(buffer, format=fmt.upper(), **kwargs)
    return buffer.getvalue()


EXT_FORMAT = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp", "bmp": "bmp", "gif": "gif",
              "tiff": "tiff", "tif": "tiff"}


@pytest.fixture
def make_shard(tmp_path) -> Callable[..., str]:
    """make_shard(name, n=8, ext="jpg", start=0, keys=None, images=None) -> path of a tar written by
    webdataset.TarWriter.

    Sample i has KEY.<ext> (a real photo tile, or `images[i]`), KEY.txt and KEY.json.
    """
    import webdataset as wds

    def make(name: str = "00000.tar", n: int = 8, ext: str = "jpg", start: int = 0,
             keys: list[str] | None = None, folder: str = "shards", images: list[np.ndarray] | None = None) -> str:
        tiles = photo_tiles()
        keys = keys or [f"{start + i:08d}" for i in range(n if images is None else len(images))]
        path = os.path.join(tmp_path, folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with wds.TarWriter(path, encoder=False, mtime=1_700_000_000) as sink:
            for i, key in enumerate(keys):
                tile = tiles[(start + i) % len(tiles)] if images is None else images[i]
                sink.write({"__key__": key, ext: encode(tile, EXT_FORMAT[ext]),
                            "txt": f"caption {key}".encode(), "json": f'{{"key": "{key}"}}'.encode()})
        return path

    return make


def write_ids(folder, ids, column: str = "id", name: str = "ids.parquet", type_=None) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    pq.write_table(pa.table({column: pa.array(ids, type_)}), path)
    return path


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory, monkeypatch):
    """Each test gets its own home folder, so the ID index cache (~/.cache/imagesieve) is its own."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    return home


def build_tiny_clip(model_dir, patch_size: int = 32) -> str:
    """A tiny randomly initialised CLIP saved as NeMo Curator's model_dir holds one
    (`model_dir/openai/clip-vit-large-patch14/`: config.json, model.safetensors, preprocessor_config.json),
    built with transformers, nothing downloaded. `patch_size=224` (one patch, the class embedding zeroed)
    keeps distinct images apart: a random ViT over many patches gives nearly one embedding to every photo."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                                     "num_attention_heads": 4, "vocab_size": 99, "max_position_embeddings": 16,
                                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
                        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                       "num_attention_heads": 4, "image_size": 224, "patch_size": patch_size},
                        projection_dim=64)
    model = CLIPModel(config).eval()
    if patch_size == 224:
        with torch.no_grad():
            model.vision_model.embeddings.class_embedding.zero_()
    folder = os.path.join(model_dir, "openai", "clip-vit-large-patch14")
    model.save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)  # CLIP's: 224, bicubic, centre crop, CLIP mean and std
    return str(model_dir)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """The model_dir of `build_tiny_clip` (one patch), built once per session; skips without transformers."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), patch_size=224)


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint():
    """An S3-compatible server (moto) on 127.0.0.1 for the tests of one module; its URL."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(endpoint, request):
    """An s3fs file system on the server and a fresh bucket for this test."""
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint, use_listings_cache=False,
                           skip_instance_cache=True)
    name = request.node.name
    bucket = f"b-{name.replace('_', '-')[:40].lower().strip('-')}-{zlib.crc32(name.encode()):08x}"
    fs.mkdir(bucket)
    fs.bucket = bucket
    return fs


@pytest.fixture
def restored_environment():
    """`ray.init` leaves variables in os.environ (RAY_AUTH_MODE=token, ...) that make a later test's
    local cluster fail to start: put the environment back as it was."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)

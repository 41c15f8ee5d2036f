"""CLIP from a Hugging Face folder, as NeMo Curator's `model_dir` holds it: a tiny randomly initialised
CLIP built here with transformers (nothing downloaded), embeddings checked against transformers' own
`get_image_features`, the folder rules, the GPU request, and `find --method semantic --model DIR`."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import build_tiny_clip, photo_tiles
from PIL import Image

from imagesieve import ImageEmbeddingStage, Resources
from imagesieve.cli import main
from imagesieve.executors.plan import with_cluster_resources
from imagesieve.stages.embedding.clip_model import ClipEmbedder, ClipFolderError, clip_folder, clip_identity
from imagesieve.stages.io import ImageReaderStage


def read(shard: str):
    return ImageReaderStage().read_shard(shard, os.path.basename(shard))


def transformers_features(folder: str, images: list[np.ndarray]) -> np.ndarray:
    """What Curator's CLIPImageEmbeddings computes: the folder's processor, get_image_features, L2."""
    torch = pytest.importorskip("torch")
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    pixels = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)(images=images,
                                                                                return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels)
    if not isinstance(features, torch.Tensor):
        features = features.pooler_output
    features = features.numpy()
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def test_stage_embeddings_equal_transformers_own(make_shard, tmp_path):
    pytest.importorskip("transformers")
    model_dir = build_tiny_clip(tmp_path / "models")  # the default ViT: 7x7 patches
    shard = make_shard(n=9)
    batch = ImageEmbeddingStage(model_dir=model_dir, model_inference_batch_size=4).process(read(shard))
    ours = np.stack([image.embedding for image in batch.data])
    decoded = [np.asarray(Image.open(io.BytesIO(image.read_bytes())).convert("RGB")) for image in batch.data]
    theirs = transformers_features(clip_folder(model_dir), decoded)
    assert ours.shape == (9, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert (np.sum(ours * theirs, axis=1) >= 0.999).all()


def test_decoded_image_data_gives_the_same_embedding(make_shard, tiny_clip):
    from_bytes = ImageEmbeddingStage(model_dir=tiny_clip).process(read(make_shard(n=3)))
    batch = read(make_shard(n=3))
    for image in batch.data:
        image.decode()  # as Curator's reader leaves them
    decoded = ImageEmbeddingStage(model_dir=tiny_clip, remove_image_data=True).process(batch)
    for a, b in zip(from_bytes.data, decoded.data, strict=True):
        assert float(a.embedding @ b.embedding) > 0.9999
        assert not b.is_decoded


def test_a_folder_holding_config_json_itself_is_taken(tiny_clip):
    folder = clip_folder(tiny_clip)
    assert folder.endswith(os.path.join("openai", "clip-vit-large-patch14"))
    assert clip_folder(folder) == folder
    tiles = list(photo_tiles()[:2])
    np.testing.assert_allclose(ClipEmbedder(folder)(tiles), ClipEmbedder(tiny_clip)(tiles), atol=1e-6)
    assert clip_identity(folder) == clip_identity(tiny_clip)


def test_a_folder_without_clip_names_where_it_looked(tmp_path):
    with pytest.raises(ClipFolderError, match="openai/clip-vit-large-patch14/config.json"):
        clip_folder(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ClipFolderError, match="model_type is 'bert', not 'clip'"):
        clip_folder(str(tmp_path))


def test_without_the_clip_extra_the_message_says_what_to_install(tmp_path):
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the clip extra is installed")
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(ImportError, match=r"pip install 'imagesieve\[clip\]'"):
        ImageEmbeddingStage(model_dir=str(tmp_path)).setup()


def test_onnx_only_settings_are_refused_with_a_clip_folder():
    with pytest.raises(ValueError, match="flip: settings of the ONNX models"):
        ImageEmbeddingStage(model_dir="models", flip=True)
    with pytest.raises(ValueError, match="not both"):
        ImageEmbeddingStage(model_dir="models", model="m.onnx")


def test_gpu_share_is_asked_for_only_where_the_cluster_has_gpus():
    clip = ImageEmbeddingStage(model_dir="models", num_gpus_per_worker=0.5)
    assert clip.resources == Resources()  # the constructor probes nothing
    assert clip.resources_on(has_gpus=True) == Resources(gpus=0.5)
    assert clip.resources_on(has_gpus=False) == Resources()
    onnx = ImageEmbeddingStage()
    assert onnx.resources_on(has_gpus=True) == Resources()  # onnxruntime runs on the CPU here
    on_gpus = with_cluster_resources([onnx, clip], has_gpus=True)
    assert on_gpus[0] is onnx and on_gpus[1].resources == Resources(gpus=0.5) and clip.resources == Resources()
    assert with_cluster_resources([clip], has_gpus=False)[0] is clip


def test_find_semantic_with_a_clip_folder_finds_the_planted_copies(make_shard, tiny_clip, tmp_path, capsys):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(12)]
    make_shard("00000.tar", images=images)
    make_shard("00001.tar", images=[images[2], images[7]], keys=["copy2", "copy7"])
    out = str(tmp_path / "out")
    assert main(["find", "--quiet", "--method", "semantic", "--model", tiny_clip, "--eps", "0.01", "--keep", "first",
                 str(tmp_path / "shards"), out]) == 0
    assert sorted(pq.read_table(os.path.join(out, "duplicates")).column("id").to_pylist()) == ["copy2", "copy7"]
    assert pq.read_table(os.path.join(out, "embeddings", "00000.tar.parquet")).num_rows == 12

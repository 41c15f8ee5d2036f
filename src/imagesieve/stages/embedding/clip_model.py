"""CLIP image embeddings from a Hugging Face folder, loaded as NeMo Curator loads them.

Curator's `model_dir` holds `openai/clip-vit-large-patch14/` (`config.json`, `model.safetensors`,
`preprocessor_config.json`); a folder that itself holds a CLIP `config.json` is taken too. The model
is read with `transformers.CLIPModel` from local files only (nothing is ever downloaded), images go
through the folder's `CLIPImageProcessor` (resize to 224 bicubic, centre crop, CLIP's mean and std,
as Curator's list path does), and the output is `get_image_features`, L2-normalised: Curator's
embeddings for the same images. Runs on a GPU when torch sees one in the worker, else on the CPU.
torch and transformers are the optional `clip` extra.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from PIL import Image

CURATOR_CLIP_ID = "openai/clip-vit-large-patch14"  # where Curator's CLIPImageEmbeddings puts its weights
INSTALL_HINT = "pip install 'imagesieve[clip]'"


class ClipFolderError(FileNotFoundError):
    """A `model_dir` that holds no CLIP model; names the folders looked in."""


def clip_folder(model_dir: str) -> str:
    """The folder with the CLIP `config.json`: `model_dir/openai/clip-vit-large-patch14` (Curator's
    layout) or `model_dir` itself."""
    for folder in (os.path.join(model_dir, CURATOR_CLIP_ID), model_dir):
        config = os.path.join(folder, "config.json")
        if os.path.isfile(config):
            with open(config, encoding="utf-8") as file:
                kind = json.load(file).get("model_type")
            if kind != "clip":
                raise ClipFolderError(f"{config}: model_type is {kind!r}, not 'clip'; model_dir must hold a "
                                      "CLIP model in Hugging Face layout")
            return folder
    raise ClipFolderError(f"no CLIP model in {model_dir}: expected {os.path.join(model_dir, CURATOR_CLIP_ID)}/"
                          "config.json (NeMo Curator's layout) or config.json in the folder itself; imagesieve "
                          "never downloads weights, so copy the folder Curator downloaded")


def is_clip_folder(path: str) -> bool:
    """A folder that `clip_folder` accepts (the command line's `--model DIR`)."""
    if not os.path.isdir(path):
        return False
    try:
        clip_folder(path)
    except ClipFolderError:
        return False
    return True


def clip_identity(model_dir: str) -> str:
    """What embeddings on disk record about the model: the SHA-256 of the folder's config and weights,
    so a rerun with other weights recomputes them."""
    folder = clip_folder(model_dir)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith((".json", ".safetensors", ".bin")):
            digest.update(name.encode() + b"\0")
            with open(os.path.join(folder, name), "rb") as file:
                for block in iter(lambda: file.read(1 << 22), b""):
                    digest.update(block)
    return f"clip:{digest.hexdigest()[:16]}"


def _import_torch_transformers():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(f"a CLIP model_dir needs torch and transformers: {INSTALL_HINT} (or use the default "
                          "model, an ONNX file, or precomputed embeddings)") from exc
    return torch, transformers


class ClipEmbedder:
    """Loads the CLIP folder once; `__call__(images)` gives (n, D) float32 unit rows. `threads`: torch's
    CPU threads in this process (the executor already runs a worker per core; and a worker forked from a
    process that ran torch on several threads would hang in OpenMP)."""

    def __init__(self, model_dir: str, device: str | None = None, threads: int | None = 1) -> None:
        torch, transformers = _import_torch_transformers()
        if threads:
            torch.set_num_threads(threads)
        self.folder = clip_folder(model_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.model = transformers.CLIPModel.from_pretrained(self.folder, local_files_only=True)
        except OSError as exc:
            raise ClipFolderError(f"{self.folder}: cannot load the CLIP weights ({exc})") from exc
        self.model = self.model.to(self.device).train(False)  # inference mode (dropout off)
        if os.path.isfile(os.path.join(self.folder, "preprocessor_config.json")):
            self.processor = transformers.CLIPImageProcessor.from_pretrained(self.folder, local_files_only=True)
        else:  # the class defaults are CLIP's: 224, bicubic, centre crop, CLIP mean and std
            self.processor = transformers.CLIPImageProcessor()
        self.decode_size = _shortest_edge(self.processor)

    def pixels(self, images: list[Image.Image | np.ndarray]):
        """The model's input tensor for `images` (RGB), as Curator's processor makes it."""
        rgb = [im.convert("RGB") if isinstance(im, Image.Image) else im for im in images]
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"]

    def __call__(self, images: list[Image.Image | np.ndarray]) -> np.ndarray:
        torch, _ = _import_torch_transformers()
        with torch.no_grad():
            features = self.model.get_image_features(pixel_values=self.pixels(images).to(self.device))
            if not isinstance(features, torch.Tensor):  # newer transformers may return a model output
                features = features.pooler_output
            features = features / torch.linalg.vector_norm(features, dim=-1, keepdim=True)
        return features.float().cpu().numpy()


def _shortest_edge(processor) -> int:
    size = getattr(processor, "size", None) or {}
    return int(size.get("shortest_edge") or size.get("height") or 224)

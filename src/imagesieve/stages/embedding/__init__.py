"""Embedding stages: images to vectors, and vectors to Parquet."""

from imagesieve.stages.embedding.embedding_stage import ImageEmbeddingStage
from imagesieve.stages.embedding.embedding_writer import EmbeddingWriterStage

__all__ = ["EmbeddingWriterStage", "ImageEmbeddingStage"]

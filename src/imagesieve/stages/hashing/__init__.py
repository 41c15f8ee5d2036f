"""Hashing stages."""

from imagesieve.stages.hashing.hash_stage import ImageHashStage
from imagesieve.stages.hashing.hash_writer import HashWriterStage

__all__ = ["HashWriterStage", "ImageHashStage"]

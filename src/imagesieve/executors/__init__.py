"""Executors decide where stages run: `LocalExecutor` (processes on one machine) or `RayExecutor`."""

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor

__all__ = ["BaseExecutor", "LocalExecutor", "RayExecutor"]


def __getattr__(name: str):
    if name == "RayExecutor":
        from imagesieve.executors.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'imagesieve.executors' has no attribute {name!r}")

"""Executors decide where stages run: `LocalExecutor` (processes on one machine) or `RayExecutor`."""

from imagesieve.executors.base import BaseExecutor
from imagesieve.executors.local import LocalExecutor

__all__ = ["BaseExecutor", "LocalExecutor"]

"""Stages of copy detection: keypoints of every image, for geometric verification."""

from imagesieve.stages.copy.keypoint_stage import ImageKeypointStage

__all__ = ["ImageKeypointStage"]

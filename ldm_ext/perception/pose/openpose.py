"""OpenPose through controlnet_aux: body and face keypoints of the people in a photo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image

from ldm_ext.cli import UserError
from ldm_ext.face.align import to_rgb_array

from .keypoints import BODY_PARTS, Person
from .names import ANNOTATOR_FILES, DEFAULT_POSE_WEIGHTS, download_command


class PoseModelMissing(UserError, RuntimeError):
    """OpenPose weights are not available locally; the message says how to provide them."""


def person_from_pose(pose, width: int, height: int) -> Person:
    """Person from a controlnet_aux ``PoseResult`` (normalised coordinates)."""
    body = np.zeros((len(BODY_PARTS), 3), np.float32)
    for index, point in enumerate(pose.body.keypoints):
        if point is not None:
            body[index] = (point.x * width, point.y * height, point.score)
    face = None
    if pose.face is not None:
        face = np.array([(p.x * width, p.y * height, 1.0) if p.x >= 0 and p.y >= 0 else (0, 0, 0)
                         for p in pose.face], dtype=np.float32)
    return Person(body=body, face=face)


class OpenPoseEstimator:
    """OpenPose body + face keypoints through controlnet_aux's ``OpenposeDetector``.

    Args:
        name_or_path: local folder in the ``lllyasviel/Annotators`` layout
            (``ANNOTATOR_FILES``) or a hub id (default lllyasviel/Annotators).
        device: torch device.
        local_files_only: never contact the hub.

    Missing weights raise ``PoseModelMissing`` with the download command.
    """

    def __init__(self, name_or_path: str = DEFAULT_POSE_WEIGHTS, device: str = "cpu",
                 local_files_only: bool = False) -> None:
        folder = Path(name_or_path)
        missing = [f for f in ANNOTATOR_FILES if not (folder / f).is_file()]
        if folder.is_dir() and missing:
            raise PoseModelMissing(f"OpenPose weights {', '.join(missing)} not in {folder}: "
                                   f"download them with `{download_command(str(folder))}`")
        from controlnet_aux import OpenposeDetector

        try:
            detector = OpenposeDetector.from_pretrained(name_or_path,
                                                        local_files_only=local_files_only)
        except (OSError, ValueError) as error:
            raise PoseModelMissing(
                f"OpenPose weights ({', '.join(ANNOTATOR_FILES)}) not found for "
                f"'{name_or_path}' (not a folder, nor in the Hugging Face cache): download "
                f"them with `{download_command()}` and name that folder with --pose-weights "
                f"DIR ({error})") from error
        self.detector = detector.to(device)

    def __call__(self, image: PIL.Image.Image | np.ndarray) -> list[Person]:
        """People (body + face keypoints, pixels) in an HWC uint8 RGB image."""
        rgb = to_rgb_array(image)
        height, width = rgb.shape[:2]
        poses = self.detector.detect_poses(rgb, include_hand=False, include_face=True)
        return [person_from_pose(pose, width, height) for pose in poses]

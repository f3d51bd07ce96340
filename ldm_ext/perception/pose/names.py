"""What pose inputs take, by name: the pose-file formats ``files`` reads and the
OpenPose annotator's weights (``openpose.OpenPoseEstimator``). Imports nothing
heavy, so command-line help and the checks before loading can name them without torch.
"""
from __future__ import annotations

from pathlib import Path

from ldm_ext.cli import InputError

POSE_FORMATS = "OpenPose JSON (BODY_25 or COCO-18), controlnet_aux's pose JSON or idforge's"
DEFAULT_POSE_WEIGHTS = "lllyasviel/Annotators"  # hub repo of the OpenPose annotator
ANNOTATOR_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")


def download_command(folder: str = "DIR") -> str:
    """The command that puts the OpenPose annotator's weights into ``folder``."""
    return (f"hf download {DEFAULT_POSE_WEIGHTS} {' '.join(ANNOTATOR_FILES)} "
            f"--local-dir {folder}")


def check_pose_weights(folder: str | Path, label: str = "--pose-weights") -> None:
    """A local annotator folder holds every weight file, else an InputError naming the
    missing ones and the command that downloads them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{label} {folder}: no such folder (get the weights with "
                         f"`{download_command(str(folder))}`)")
    missing = [name for name in ANNOTATOR_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{label} {folder}: OpenPose weights {', '.join(missing)} missing; "
                         f"download them with `{download_command(str(folder))}`")

"""People as OpenPose keypoints, split by job:

- ``keypoints``: ``Person`` (COCO-18 body, OpenPose's 70 face points) and moving people
  onto another canvas;
- ``face_boxes``: face boxes from keypoints (InstantFamily's face regions at inference);
- ``control``: InstantFamily's control image (skeletons plus slot-coloured face circles);
- ``draw``: OpenPose skeleton drawing, pixel-identical to controlnet_aux;
- ``templates``: poses without a pose model (from detected faces; side-by-side templates);
- ``openpose``: the OpenPose annotator through controlnet_aux;
- ``files``: pose JSON read (OpenPose, controlnet_aux, idforge) and written (idforge);
- ``names``: the formats and annotator weights by name, for help before anything loads.

The names below are imported on first use (PEP 562), not with the package: command-line
help reads ``names`` without loading OpenCV or the rest.
"""
from importlib import import_module

_HOMES = {
    "BODY_PARTS": "keypoints", "NUM_FACE_POINTS": "keypoints", "Person": "keypoints",
    "fit_people": "keypoints",
    "face_box": "face_boxes", "detector_box": "face_boxes", "face_center": "face_boxes",
    "SLOT_COLORS": "control", "slot_color": "control", "circle_radius": "control",
    "draw_slot_circle": "control", "draw_slot_circles": "control",
    "render_control_image": "control",
    "FACE_TEMPLATE": "templates", "FACE_TEMPLATE_5": "templates",
    "people_from_faces": "templates", "pose_template": "templates",
    "OpenPoseEstimator": "openpose", "PoseModelMissing": "openpose",
    "person_from_pose": "openpose",
    "PoseFile": "files", "load_pose": "files", "save_people": "files",
    "POSE_FORMATS": "names", "DEFAULT_POSE_WEIGHTS": "names", "ANNOTATOR_FILES": "names",
    "download_command": "names", "check_pose_weights": "names",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'ldm_ext.perception.pose' has no attribute {name!r}")
    return getattr(import_module(f"ldm_ext.perception.pose.{_HOMES[name]}"), name)

"""Face detection and recognition features behind two small protocols (see ``types``).

The names below are imported on first use (PEP 562), not with the package:
``ldm_ext.perception.pose`` (and through it the data schema and ``prepare``'s command line)
reads ``face.align`` without loading the detectors, facenet-pytorch and torch (seconds).
"""
from importlib import import_module

_HOMES = {
    "Faces": "types", "FaceFeatures": "types", "FaceDetector": "types",
    "FaceEncoder": "types", "FaceModelMissing": "types",
    "MTCNNDetector": "detect", "InsightFaceDetector": "detect", "DlibDetector": "detect",
    "build_face_detector": "detect", "detect_batch": "detect",
    "FaceNetEncoder": "encode", "ArcFaceEncoder": "encode", "DlibEncoder": "encode",
    "InsightFaceEncoder": "encode", "build_face_encoder": "encode",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'ldm_ext.face' has no attribute {name!r}")
    return getattr(import_module(f"ldm_ext.face.{_HOMES[name]}"), name)

"""Face detection and recognition features behind two small protocols (see ``types``)."""
from .detect import (DlibDetector, InsightFaceDetector, MTCNNDetector, build_face_detector,
                     detect_batch)
from .encode import (ArcFaceEncoder, DlibEncoder, FaceNetEncoder, InsightFaceEncoder,
                     build_face_encoder)
from .types import FaceDetector, FaceEncoder, FaceFeatures, FaceModelMissing, Faces

__all__ = [
    "Faces", "FaceFeatures", "FaceDetector", "FaceEncoder", "FaceModelMissing",
    "MTCNNDetector", "InsightFaceDetector", "DlibDetector", "build_face_detector",
    "detect_batch",
    "FaceNetEncoder", "ArcFaceEncoder", "DlibEncoder", "InsightFaceEncoder",
    "build_face_encoder",
]

"""Image/crop conversions and five-point similarity alignment shared by the face backends.

torch is imported by the two functions that make or read tensors, not with the module:
``ldm_ext.perception.pose`` draws and aligns with the rest, and command lines read it before
their checks (``ldm_ext/cli.py``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
import PIL.Image

if TYPE_CHECKING:
    import torch

# ArcFace's canonical five points in a 112x112 crop (insightface `arcface_dst`):
# left eye, right eye, nose tip, mouth left, mouth right (image left/right).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def to_rgb_array(image: PIL.Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image or an HW / HWC(3|4) uint8 array."""
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an HWC RGB image, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


def crops_to_tensor(crops: list[np.ndarray], size: int) -> torch.Tensor:
    """Stack HWC uint8 RGB crops of side ``size`` into (F, 3, S, S) float32 in [-1, 1]."""
    import torch

    if not crops:
        return torch.zeros(0, 3, size, size)
    stacked = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()  # (F, 3, S, S)
    return stacked / 127.5 - 1.0


def tensor_to_uint8(crops: torch.Tensor, size: int | None = None) -> np.ndarray:
    """(B, 3, S, S) crops in [-1, 1] -> (B, size, size, 3) uint8 RGB, for non-torch backends."""
    import torch

    pixels = ((crops.detach().float().cpu() + 1.0) * 127.5).clamp(0, 255).round()
    images = pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, S, S, 3)
    if size is None or images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images)
    interpolation = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (size, size), interpolation=interpolation) for im in images])


def arcface_crops(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """(F, size, size, 3) uint8: each face of ``image`` (H, W, 3) uint8 warped by the
    similarity that puts its five ``landmarks`` (F, 5, 2) on ArcFace's template
    (insightface's ``estimate_norm``: the crop ArcFace models are trained on); outside the
    image is black. ``size``: 112 (``norm_crop`` itself) or a multiple, at which the crop is
    that 112 crop sampled ``size / 112`` times finer: averaging its k x k pixel blocks (an
    area resize to 112, as the encoders do) puts the landmarks where ``norm_crop`` puts them
    (``norm_crop(..., 224)`` would leave them a quarter pixel up and left)."""
    from insightface.utils.face_align import estimate_norm

    if size % 112:
        raise ValueError(f"ArcFace crop size {size} is not a multiple of 112")
    scale = size // 112
    crops = []
    for points in np.asarray(landmarks, np.float32):
        matrix = estimate_norm(points, 112) * scale  # (2, 3) image -> 112 crop, scaled
        matrix[:, 2] += (scale - 1) / 2  # block centres of the fine crop on 112's pixels
        crops.append(cv2.warpAffine(image, matrix, (size, size), borderValue=0.0))
    return np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama (1991), Eq. 40-42. Args: src, dst (N, 2) with N >= 2. Returns a (2, 3) matrix
    ``M`` with ``dst ~= src @ M[:, :2].T + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    u, sigma, vt = np.linalg.svd(dst_c.T @ src_c / len(src))  # covariance (2, 2)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / src_c.var(0).sum()
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float32)


def apply_similarity(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) matrix to (N, 2) points."""
    return (np.asarray(points, np.float32) @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def complete_five_points(left_eye: np.ndarray, right_eye: np.ndarray,
                         nose: np.ndarray) -> np.ndarray:
    """Five landmarks from eyes and nose: the mouth corners are *estimated* by mapping the
    ArcFace template's mouth corners with the similarity that maps its eyes onto the eyes
    (the nose is not used for the fit: dlib's nose point is the nose base, not the tip).

    Used for detectors (dlib's 5-point model) that do not locate the mouth.
    """
    eyes = np.stack([left_eye, right_eye]).astype(np.float32)
    matrix = fit_similarity(ARCFACE_TEMPLATE[:2], eyes)
    mouth = apply_similarity(matrix, ARCFACE_TEMPLATE[3:])
    return np.concatenate([eyes, np.asarray(nose, np.float32)[None], mouth])

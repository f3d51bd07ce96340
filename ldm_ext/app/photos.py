"""The face photos a user uploads to the app: read, turned upright, downscaled, checked.

A phone photo can be 50-100 megapixels; face detection and the identity encoders need a
face of a few hundred pixels, so photos are shrunk to ``MAX_SIDE`` on reading (a JPEG is
decoded at 1/2 - 1/8 scale straight away, ``Image.draft``), which keeps an 80-megapixel
upload to a fraction of a second and a few MB."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

from ldm_ext.cli import InputError, one_line

MAX_SIDE = 2048  # longest side of a photo after reading


def photo_label(path: str | Path, index: int) -> str:
    """How messages name upload ``index`` (0-based): its position and file name."""
    return f"photo {index + 1} ({Path(path).name})"


def read_upload(path: str | Path, index: int = 0) -> Image.Image:
    """The RGB image of an uploaded file, EXIF-rotated, longest side at most
    ``MAX_SIDE``; an InputError naming the upload when it is not a readable image."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{photo_label(path, index)}: not a readable image "
                         f"({one_line(str(err))})") from None
    upright.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return upright


def read_uploads(paths: list[str | Path] | None, detector) -> list[Image.Image]:
    """Every upload read (``read_upload``) and checked to show a face to ``detector``
    (a ``ldm_ext.face`` detector): an InputError naming the first photo without one."""
    images = []
    for index, path in enumerate(paths or []):
        image = read_upload(path, index)
        if len(detector.detect(image)) == 0:
            raise InputError(f"{photo_label(path, index)}: no face found ({detector.name}); "
                             "upload a photo where a face is clearly visible")
        images.append(image)
    return images

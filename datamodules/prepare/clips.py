"""Video inputs of ``datamodules.prepare videos`` (CelebV-Text, PortraitBooth), cut into
tasks, and their frames.

``--input`` holds either the cut clips (CelebV-Text's download script names them
``<clip id>.mp4.mp4``: the id is the name with every video suffix removed) or the uncut
raw videos named by their YouTube id (``<ytb_id>.mp4``). A raw video stands for every
clip of the info json with that ``ytb_id``: its frames are read inside the clip's
``duration`` and cropped to its ``bbox`` as the release's own cutting does (the box grown
by 2 % of the frame, then squared), so no cut files are written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from datamodules.prepare.rejected import Rejected
from datamodules.prepare.clip_meta import VIDEO_SUFFIXES, ClipMeta, clip_id
from datamodules.prepare.sources import Task, chunks
from ldm_ext.cli import InputError

BOX_GROWTH = 0.02  # CelebV-Text's cutting grows the box by 2 % of the frame per side


def plan_videos(input_dir: str, clips_per_shard: int, meta: Mapping[str, ClipMeta]) -> list[Task]:
    """Tasks over the videos of a folder, sorted by name. A video is one clip (item: its
    path) unless its id is no clip's but some clips' ``ytb_id``: then one item
    ``(path, clip id)`` per clip of that raw video."""
    files = sorted(str(p) for p in Path(input_dir).rglob("*") if p.suffix.lower() in
                   VIDEO_SUFFIXES)
    if not files:
        raise InputError(f"no video clips in {input_dir!r}")
    raw: dict[str, list[str]] = {}
    for clip, entry in sorted(meta.items()):
        raw.setdefault(entry.ytb_id, []).append(clip)
    items: list = []
    for path in files:
        video = clip_id(path)
        if video in meta or video not in raw:
            items.append(path)  # a clip; one without metadata is rejected and counted
        else:
            items += [(path, clip) for clip in raw[video]]
    return [Task(i, "video", input_dir, c) for i, c in enumerate(chunks(items, clips_per_shard))]


def read_frames(path: str, positions: list[float], meta: ClipMeta | None = None
                ) -> list[np.ndarray]:
    """RGB frames at ``positions`` of a clip (0: first, 0.5: middle, 1: last), by OpenCV.
    With ``meta`` of a raw video: positions inside its ``window``, cropped to its ``bbox``."""
    capture = cv2.VideoCapture(path)
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:
            raise Rejected("bad_video", f"{path}: no frames")
        first, last = _frame_range(total, capture.get(cv2.CAP_PROP_FPS),
                                   meta.window if meta else None)
        frames = []
        for position in positions:
            index = first + int(position * (last - first) + 0.5)
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if not ok:
                raise Rejected("bad_video", f"{path}: frame {index} of {total}")
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            frames.append(crop(frame, meta.bbox) if meta and meta.bbox else frame)
        return frames
    finally:
        capture.release()


def _frame_range(total: int, fps: float, window: tuple[float, float] | None) -> tuple[int, int]:
    """(first, last) frame index of the clip: the whole video, or ``window`` in seconds."""
    if window is None:
        return 0, total - 1
    if fps <= 0:
        raise Rejected("bad_video", "no frame rate to cut the clip by")
    if window[0] * fps >= total:
        raise Rejected("bad_video", f"clip starts at {window[0]} s, after the video's end")
    first = max(0, round(window[0] * fps))
    return first, min(total - 1, max(first, round(window[1] * fps) - 1))


def crop(frame: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """``frame`` (H, W, 3) cut to ``bbox`` (top, bottom, left, right; fractions of the frame
    when all are <= 1, else pixels), grown by 2 % of the frame and squared about its centre."""
    h, w = frame.shape[:2]
    top, bottom, left, right = (np.array(bbox, np.float64) * ([h, h, w, w] if max(bbox) <= 1
                                                               else 1))
    top, bottom = max(top - BOX_GROWTH * h, 0), min(bottom + BOX_GROWTH * h, h)
    left, right = max(left - BOX_GROWTH * w, 0), min(right + BOX_GROWTH * w, w)
    half, cy, cx = min(bottom - top, right - left) // 2, (top + bottom) / 2, (left + right) / 2
    y0, x0 = int(max(cy - half, 0)), int(max(cx - half, 0))
    out = frame[y0:int(cy + half), x0:int(cx + half)]
    if min(out.shape[:2]) < 1:
        raise Rejected("bad_video", f"bbox {bbox} holds no pixels of a {w}x{h} frame")
    return np.ascontiguousarray(out)

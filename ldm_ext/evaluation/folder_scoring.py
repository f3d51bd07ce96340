"""Scoring a results folder: every readable image of the plan, in chunks, with a progress
bar; images that cannot be read are skipped and listed, never fatal alone. The scorers
(torch) are imported when scoring starts, after every input has been checked."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ldm_ext.cli import InputError, open_image


def score_folder(cfg, image_dir: Path, records: list[dict], subjects: dict[str, dict],
                 device: str) -> tuple[list[dict], list[np.ndarray], list[dict]]:
    """Metrics rows and similarity matrices of every readable image, in chunks, with a
    progress bar and ETA (a protocol run scores thousands of images), and the images that
    could not be read (``{"file", "reason"}``: skipped, counted, listed in the report)."""
    from tqdm import tqdm

    from ldm_ext.evaluation.scoring import build_scorers, embed_references, score_images

    scorers = build_scorers(cfg.scoring, device)
    photos = {sid: np.asarray(open_image(s["photo"], f"subject {sid}: photo"))
              for sid, s in subjects.items()}
    refs = embed_references(scorers, photos)
    rows, sims, skipped, chunk = [], [], [], max(1, cfg.scoring.batch_size) * 4
    with tqdm(total=len(records), desc="scoring", unit="image") as bar:
        for start in range(0, len(records), chunk):
            images, part, unread = read_images(image_dir, records[start:start + chunk])
            skipped += unread
            if part:
                new_rows, new_sims = score_images(scorers, images, part, refs)
                rows += new_rows
                sims += new_sims
            bar.update(len(part) + len(unread))
    if not rows:
        raise InputError(f"{image_dir}: none of its {len(records)} images could be read "
                         f"(first: {skipped[0]['file']}: {skipped[0]['reason']})")
    return rows, sims, skipped


def read_images(image_dir: Path, records: list[dict]) -> tuple[list, list[dict], list[dict]]:
    """(RGB arrays, their records) of the readable images of ``records``, and a
    ``{"file", "reason"}`` entry per image that is missing or cannot be decoded."""
    images, kept, unread = [], [], []
    for record in records:
        try:
            images.append(np.asarray(open_image(image_dir / record["file"])))
            kept.append(record)
        except InputError as err:
            unread.append({"file": record["file"], "reason": str(err)})
    return images, kept, unread

"""The scores under each generated image: identity against each uploaded photo, by the
run's own face encoder and by a second, independent one, and CLIP-T against the prompt.

The networks are those the run's training evaluation uses (``ldm_ext.evaluation.run_scoring.
run_scoring``: its face encoder and weights, e.g. random-init on a tiny run, a second
encoder of another family, CLIP ViT-L/14 where its weights are present), built once per
distinct scoring config and shared by the runs that have it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ldm_ext.evaluation import metrics as M
from ldm_ext.evaluation.scorers import FaceScorer
from ldm_ext.evaluation.scoring import Scorers


def best_match(scorer: FaceScorer, images: Sequence[Image.Image],
               refs: np.ndarray) -> list[list[float | None]]:
    """Per image, per reference (R, D): the cosine of its best-matching face in the image,
    None when the image shows no face."""
    out = []
    for faces in scorer.embed(images):  # (F, D) per image
        sim = M.cosine_matrix(faces, refs) if len(faces) else None  # (F, R)
        out.append([None] * len(refs) if sim is None else sim.max(axis=0).tolist())
    return out


@dataclass
class ImageScores:
    """One image's scores: ``identity[encoder name][k]`` against photo k, and CLIP-T."""

    identity: dict[str, list[float | None]]
    clip_t: float | None


class PhotoScorer:
    """Scores of generated images against a request's photos and prompt."""

    def __init__(self, scorers: Scorers) -> None:
        self.scorers = scorers
        self.face_scorers = [s for s in (scorers.faces, scorers.second) if s is not None]

    @property
    def detector(self):
        """The run's face detector: uploads without a face it finds are refused."""
        return self.scorers.faces.detector

    def score(self, images: Sequence[Image.Image], photos: Sequence[Image.Image],
              prompt: str) -> list[ImageScores]:
        """``ImageScores`` of each image; identity only when there are photos."""
        identity: dict[str, list] = {}
        for scorer in self.face_scorers if photos else []:
            refs = scorer.references(list(photos))  # (R, D): largest face of each photo
            identity[scorer.encoder.name] = best_match(scorer, images, refs)
        clip = self.scorers.clip_t
        texts = clip.text_scores(list(images), [prompt] * len(images)).tolist() if clip \
            else [None] * len(images)
        return [ImageScores({name: rows[i] for name, rows in identity.items()}, texts[i])
                for i in range(len(images))]


def caption(scores: ImageScores) -> str:
    """One line under an image: identity per photo and encoder, then CLIP-T."""
    parts = []
    for name, values in scores.identity.items():
        shown = " / ".join("no face" if v is None else f"{v:.2f}" for v in values)
        parts.append(f"ID {name}: {shown}")
    if scores.clip_t is not None:
        parts.append(f"CLIP-T {scores.clip_t:.3f}")
    return " · ".join(parts)


def table_rows(scores: Sequence[ImageScores], photo_names: Sequence[str]) -> list[list]:
    """Rows (image, photo, encoder, identity) and (image, prompt, CLIP-T, score) of a
    gallery's score table."""
    rows = []
    for i, image in enumerate(scores, 1):
        for name, values in image.identity.items():
            rows += [[i, photo, f"identity ({name})", None if v is None else round(v, 4)]
                     for photo, v in zip(photo_names, values)]
        if image.clip_t is not None:
            rows.append([i, "prompt", "CLIP-T", round(image.clip_t, 4)])
    return rows

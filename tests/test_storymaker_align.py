"""StoryMaker's face crops on real photos: training (the view, from a shard's landmarks) and
generation (the pipeline, from the detector) cut the same ArcFace-aligned crop, and its five
landmarks land on ArcFace's 112 px template once the encoders halve it."""
from __future__ import annotations

import os

import cv2
import insightface
import numpy as np
import pytest
import torch
from insightface.utils.face_align import norm_crop
from PIL import Image
from skimage import data

from datamodules.schema import MASK_CHAR, Sample
from datamodules.views.storymaker import FACE_SIZE, StoryMakerView
from ldm_ext.face.align import (ARCFACE_TEMPLATE, apply_similarity, fit_similarity,
                                 tensor_to_uint8)
from ldm_ext.perception.annotator import Annotator, Filters
from ldm_ext.pipelines.storymaker import StoryMakerPipeline

T1 = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")


@pytest.fixture(scope="module")
def annotator() -> Annotator:
    return Annotator(filters=Filters(min_face_size=16, min_score=0.9))


def photo_sample(image: np.ndarray, faces) -> Sample:
    """A shard sample of ``image`` as prepare writes it: the detector's boxes, landmarks and
    160 px box crops; every character mask the whole image (masks do not touch the face)."""
    count = len(faces)
    crops = ((faces.crops + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return Sample(key="photo", image=image, caption="a photo", boxes=faces.boxes,
                  landmarks=faces.landmarks, scores=faces.scores, crops=crops,
                  face_person=np.full(count, -1),
                  masks=np.full((count, *image.shape[:2]), MASK_CHAR, np.uint8))


def pipeline_faces(annotator: Annotator, image: np.ndarray, count: int) -> np.ndarray:
    """(count, 224, 224, 3) uint8: the face halves of the pipeline's identities (the crops
    need no model, so the pipeline is built without one)."""
    pipe = StoryMakerPipeline.__new__(StoryMakerPipeline)
    pipe.annotator = annotator
    masks = [np.ones(image.shape[:2], bool)] * count
    identities = pipe.characters(Image.fromarray(image), count, masks)  # (K, 6, 224, 224)
    return tensor_to_uint8(identities[:, :3])


def view_faces(image: np.ndarray, faces, count: int, seed: int = 0) -> np.ndarray:
    """(count, 224, 224, 3) uint8 face crops of the training view, in the view's order."""
    item = StoryMakerView(num_slots=count)(photo_sample(image, faces),
                                           torch.Generator().manual_seed(seed))
    return item["face_crops"].permute(0, 2, 3, 1).numpy()


def arcface_input(crop: np.ndarray) -> np.ndarray:
    """(112, 112, 3) int: a (224, 224, 3) uint8 face crop as InsightFaceEncoder feeds it."""
    signed = torch.from_numpy(crop[None]).permute(0, 3, 1, 2).float() / 127.5 - 1
    return tensor_to_uint8(signed, 112)[0].astype(int)


def marker_centre(crop: np.ndarray) -> np.ndarray:
    """(x, y) brightness centroid of a single-channel crop."""
    ys, xs = np.mgrid[:crop.shape[0], :crop.shape[1]]
    weight = crop.astype(np.float64)
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


@pytest.mark.parametrize("source", ["astronaut", "t1"])
def test_training_and_generation_cut_the_same_aligned_face(annotator, source):
    image = data.astronaut() if source == "astronaut" else \
        cv2.cvtColor(cv2.imread(T1), cv2.COLOR_BGR2RGB)
    faces = annotator.faces(image)
    count = min(3, len(faces))
    assert count >= 1 and (source == "astronaut" or count == 3)
    generated = pipeline_faces(annotator, image, count)
    trained = view_faces(image, faces, count)
    assert trained.shape == (count, FACE_SIZE, FACE_SIZE, 3)
    # the view shuffles its characters: each of its crops is one of the pipeline's
    diffs = np.abs(trained[:, None].astype(int) - generated[None].astype(int)).max(-1)
    match = diffs.reshape(count, count, -1).max(-1).argmin(1)  # (count,)
    assert sorted(match.tolist()) == list(range(count))
    for k, j in enumerate(match):
        trained_in, generated_in = arcface_input(trained[k]), arcface_input(generated[j])
        assert np.abs(trained_in - generated_in).max() <= 2
        # insightface's own crop of that face: the same pixels up to resampling
        aligned = norm_crop(image, faces.landmarks[j], image_size=112).astype(int)
        assert np.abs(trained_in - aligned).mean() <= 1.0


def test_landmarks_land_on_the_arcface_template(annotator):
    """A bright dot drawn at each detected landmark of the astronaut ends, in the view's crop
    halved to ArcFace's 112 px, where the least-squares similarity onto ArcFace's template
    (our own Umeyama fit) puts it: the eyes within 3 px of their template points, all five
    as close as a similarity can bring them (the smiling mouth's corners stay ~7 px off)."""
    image = data.astronaut()
    faces = annotator.faces(image).select(0)
    fitted = apply_similarity(fit_similarity(faces.landmarks[0], ARCFACE_TEMPLATE),
                              faces.landmarks[0])  # (5, 2) in the 112 crop
    centres = []
    for point in faces.landmarks[0]:
        dot = np.zeros_like(image)
        cv2.circle(dot, tuple(int(round(v)) for v in point * 16), 48, (255, 255, 255), -1,
                   lineType=cv2.LINE_AA, shift=4)  # radius 3 px, sub-pixel centre
        crop = view_faces(dot, faces, 1)[0]  # (224, 224, 3)
        centres.append(marker_centre(arcface_input(crop)[..., 0]))
    centres = np.array(centres)
    assert np.abs(centres - fitted).max() <= 0.25
    residual = np.linalg.norm(centres - ARCFACE_TEMPLATE, axis=1)  # (5,) px
    least = np.linalg.norm(fitted - ARCFACE_TEMPLATE, axis=1)
    assert residual[:2].max() <= 3.0 and np.sqrt((residual ** 2).mean()) <= \
        np.sqrt((least ** 2).mean()) + 0.25

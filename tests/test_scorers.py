"""Scorers: random-init CLIP for shapes and batching; MTCNN + dlib for real behaviour."""
from __future__ import annotations

import os
import time

import insightface
import numpy as np
import pytest
from omegaconf import OmegaConf
import skimage.data
import torch
from PIL import Image

from ldm_ext.evaluation.metrics import cosine_matrix
from ldm_ext.evaluation.scoring import Scorers, build_scorers
from ldm_ext.evaluation.scorers import (TINY_CLIP, CLIPScorer, ClipModelMissing, FaceScorer,
                               build_face_scorer, clip_preprocess, detect_batch)
from ldm_ext.eval_config import ScoringConfig
from ldm_ext.face import DlibEncoder, FaceModelMissing, FaceNetEncoder, MTCNNDetector

T1 = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip() -> CLIPScorer:
    return CLIPScorer(TINY_CLIP, "random", batch_size=3)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    astronaut = skimage.data.astronaut()  # 512x512, one face
    smaller = np.asarray(Image.fromarray(astronaut[:, ::-1]).resize((384, 384)))
    return {"astronaut": astronaut, "astronaut_small_flipped": smaller,
            "t1": np.asarray(Image.open(T1).convert("RGB"))}


def test_clip_preprocess_protocol():
    image = torch.full((3, 100, 300), 1.0)  # white, wide: resized to 224 x 672, centre crop
    out = clip_preprocess(image, 224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, torch.full_like(out, 2.0), atol=1e-4)  # (1 - 0.5) / 0.25
    black = clip_preprocess(-torch.ones(3, 64, 64), 224, (0.5,) * 3, (0.25,) * 3)
    assert torch.allclose(black, torch.full_like(black, -2.0), atol=1e-4)
    pixels = torch.randint(0, 256, (2, 3, 90, 120), dtype=torch.uint8)  # uint8 = [-1, 1]
    batch = clip_preprocess(pixels, 64, (0.5,) * 3, (0.25,) * 3)
    for image, out in zip(pixels, batch):  # one call for the batch = one call per image
        signed = clip_preprocess(image.float() / 127.5 - 1, 64, (0.5,) * 3, (0.25,) * 3)
        assert out.shape == (3, 64, 64) and torch.allclose(out, signed, atol=1e-5)


def test_clip_shapes_batching_and_text_cache(clip, photos):
    images = [photos["astronaut"], photos["t1"], torch.rand(3, 64, 80) * 2 - 1,
              photos["astronaut_small_flipped"]]
    batched = clip.encode_images(images)
    single = np.concatenate([clip.encode_images([im]) for im in images])
    assert batched.shape == (4, clip.embed_dim) == (4, 64)
    assert np.allclose(batched, single, atol=1e-5)  # batching changes nothing
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    texts = clip.encode_texts(["a man", "a woman", "a man"])
    assert texts.shape == (3, 64) and np.allclose(texts[0], texts[2])
    assert not np.allclose(texts[0], texts[1])
    assert set(clip._text_cache) == {"a man", "a woman"}
    scores = clip.text_scores(images[:2], ["a woman", "people"])
    assert scores.shape == (2,) and np.all(np.abs(scores) <= 1.0)


def test_missing_clip_weights_fail_fast_with_a_clear_error():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    start = time.perf_counter()
    with pytest.raises(ClipModelMissing, match="ViT-B-32.*openai.*random"):
        CLIPScorer("ViT-B-32", "openai")
    assert time.perf_counter() - start < 20


def test_missing_facenet_weights_named():
    with pytest.raises(FaceModelMissing, match="vggface2"):
        build_face_scorer("mtcnn", "facenet", "vggface2")


def test_batched_mtcnn_matches_per_image(photos):
    detector = MTCNNDetector(min_score=0.0)
    images = [photos["astronaut"], photos["astronaut"][:, ::-1].copy(),
              np.zeros((512, 512, 3), np.uint8)]
    batched = detect_batch(detector, images)
    single = [detector.detect(im) for im in images]
    assert [len(f) for f in batched] == [len(f) for f in single]
    assert len(batched[0]) >= 1 and len(batched[2]) == 0
    for a, b in zip(batched[:2], single[:2]):
        assert np.allclose(a.boxes, b.boxes) and torch.equal(a.crops, b.crops)


def test_facenet_random_shapes_and_no_face(photos):
    scorer = FaceScorer(MTCNNDetector(min_score=0.9), FaceNetEncoder("random"), batch_size=2)
    found = scorer.embed([photos["astronaut"], np.zeros((200, 200, 3), np.uint8)])
    assert found[0].shape == (1, 512) and found[1].shape == (0, 512)


def test_same_person_scores_higher_than_different_people(photos):
    """Real models (MTCNN detection + dlib recognition ship offline)."""
    scorer = FaceScorer(MTCNNDetector(min_score=0.95), DlibEncoder(), batch_size=4)
    astronaut, variant, group = scorer.embed([photos["astronaut"],
                                              photos["astronaut_small_flipped"], photos["t1"]])
    assert len(astronaut) == 1 and len(variant) == 1 and len(group) == 6
    same = cosine_matrix(astronaut, variant)[0, 0]
    different = cosine_matrix(astronaut, group)[0]  # six other people
    assert same > different.max() + 0.02, (same, different)
    references = scorer.references([photos["astronaut"], photos["t1"]])
    assert references.shape == (2, 128)
    with pytest.raises(ValueError, match="no face"):
        scorer.references([np.zeros((100, 100, 3), np.uint8)])


@pytest.fixture(scope="module")
def two_encoders() -> Scorers:
    """Both identity scorers as eval.py builds them, with real weights: the protocol's slot
    holds MTCNN + dlib's recognizer (FaceNet's weights do not ship offline), the second is
    ``second_encoder: auto`` (ArcFace buffalo_l where present, else dlib with its own HOG
    detector and chip alignment)."""
    return build_scorers(OmegaConf.structured(ScoringConfig(
        face_encoder="dlib", face_weights=None, min_face_score=0.95, clip_t_model=None)))


def _paired_faces(scorer: FaceScorer, images: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """(P, D) embeddings of the people in ``images`` (the largest face of the first image,
    every face of the others) and (P, D) of the same people in the mirror images, paired
    by the mirrored box centre."""
    found = scorer.detect(images + [np.ascontiguousarray(im[:, ::-1]) for im in images])
    originals, mirrored = [], []
    for k, image in enumerate(images):
        faces, flipped = found[k], found[k + len(images)]
        centres = (faces.boxes[:, 0] + faces.boxes[:, 2]) / 2
        back = image.shape[1] - (flipped.boxes[:, 0] + flipped.boxes[:, 2]) / 2
        for i in range(1 if k == 0 else len(faces)):
            j = int(np.argmin(np.abs(back - centres[i])))
            assert abs(back[j] - centres[i]) < 20, (scorer.name, k, i)
            originals.append(faces.crops[i])
            mirrored.append(flipped.crops[j])
    return scorer.encode(torch.stack(originals)), scorer.encode(torch.stack(mirrored))


def test_both_encoders_rank_same_person_above_different_people(two_encoders, photos):
    """Each person (the astronaut and the six of t1.jpg) is closer to their own mirror image
    than to anyone else, original or mirrored, by both identity encoders."""
    assert two_encoders.second is not None and two_encoders.second.name != "mtcnn+dlib"
    for scorer in (two_encoders.faces, two_encoders.second):
        originals, mirrored = _paired_faces(scorer, [photos["astronaut"], photos["t1"]])
        assert len(originals) == 7, scorer.name
        across, within = cosine_matrix(originals, mirrored), cosine_matrix(originals, originals)
        same = np.diag(across)
        other = ~np.eye(7, dtype=bool)
        nearest_other = np.where(other, np.maximum(across, within), -1).max(axis=1)
        assert (same > nearest_other).all(), (scorer.name, same, nearest_other)
        assert (same > np.where(other, across.T, -1).max(axis=1)).all(), scorer.name

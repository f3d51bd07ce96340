"""Face detectors and encoders: real offline models for behaviour, random init for shapes."""
import importlib.util
import os
import time

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
from facenet_pytorch import MTCNN

from ldm_ext.face import (ArcFaceEncoder, DlibDetector, DlibEncoder, FaceDetector, FaceEncoder,
                          FaceModelMissing, FaceNetEncoder, Faces, InsightFaceDetector,
                          InsightFaceEncoder, MTCNNDetector, build_face_detector,
                          build_face_encoder)
from ldm_ext.face import encode as encode_module
from ldm_ext.face.align import complete_five_points, fit_similarity, tensor_to_uint8
from ldm_ext.face.iresnet import IResNet


def _box_iou(a, b):
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(hi - lo, 0, None))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def _check_faces(faces: Faces, image: np.ndarray, crop_size: int) -> None:
    height, width = image.shape[:2]
    assert faces.boxes.dtype == np.float32 and faces.landmarks.shape == (len(faces), 5, 2)
    assert (faces.boxes[:, :2] < [width, height]).all() and (faces.boxes[:, 2:] > 0).all()
    lo, hi = faces.boxes[:, None, :2], faces.boxes[:, None, 2:]
    assert ((faces.landmarks >= lo) & (faces.landmarks <= hi)).all()
    areas = np.prod(faces.boxes[:, 2:] - faces.boxes[:, :2], axis=1)
    assert (np.diff(areas) <= 0).all()  # largest first
    assert faces.crops.shape == (len(faces), 3, crop_size, crop_size)
    assert faces.crops.dtype == torch.float32
    assert faces.crops.min() >= -1 and faces.crops.max() <= 1 and faces.crops.std() > 0.1


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """MTCNN's many tiny convolutions thrash with 2 OpenMP threads when the 2 cores are
    shared with other processes (3-4x slower); one thread keeps this file fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def group_photo():
    package = importlib.util.find_spec("insightface").submodule_search_locations[0]
    path = os.path.join(package, "data", "images", "t1.jpg")
    return np.asarray(PIL.Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def mtcnn():
    return MTCNNDetector(min_score=0.95)


@pytest.fixture(scope="module")
def astronaut_faces(mtcnn, astronaut):
    return mtcnn.detect(astronaut)


@pytest.fixture(scope="module")
def group_faces(mtcnn, group_photo):
    return mtcnn.detect(PIL.Image.fromarray(group_photo))


@pytest.fixture(scope="module")
def facenet():
    torch.manual_seed(0)
    return FaceNetEncoder(weights="random")


@pytest.fixture(scope="module")
def facenet_home(tmp_path_factory, facenet):
    """A TORCH_HOME whose cache holds facenet's random weights under the vggface2 release
    name, classifier included as in the real file."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "checkpoints").mkdir()
    state = dict(facenet.net.state_dict(), **{"logits.weight": torch.zeros(8631, 512),
                                              "logits.bias": torch.zeros(8631)})
    torch.save(state, home / "checkpoints" / "20180402-114759-vggface2.pt")
    return home


@pytest.fixture(scope="module")
def dlib_models():
    return DlibDetector(), DlibEncoder()


def test_mtcnn_astronaut_one_face(astronaut_faces, astronaut):
    faces = astronaut_faces
    assert len(faces) == 1 and faces.scores[0] > 0.99
    _check_faces(faces, astronaut, 160)
    assert faces.boxes[0, 0] > 150 and faces.boxes[0, 2] < 300  # the face, not the flag/suit


def test_mtcnn_group_photo_six_faces(group_faces, group_photo):
    faces = group_faces
    assert len(faces) == 6 and (faces.scores >= 0.95).all()
    _check_faces(faces, group_photo, 160)
    ious = [_box_iou(a, b) for i, a in enumerate(faces.boxes) for b in faces.boxes[i + 1:]]
    assert max(ious) == 0.0


def test_mtcnn_min_score_zero_keeps_protocol_detections(group_photo, group_faces):
    """min_score=0 keeps all MTCNN detections (FastComposer protocol): two weak extra ones."""
    faces = MTCNNDetector(min_score=0.0).detect(group_photo)
    assert len(faces) == 8 and (np.sort(faces.scores)[:2] < 0.95).all()
    np.testing.assert_allclose(faces.select(faces.scores >= 0.95).boxes, group_faces.boxes)


def test_mtcnn_no_face_in_blank_image(mtcnn):
    faces = mtcnn.detect(np.zeros((64, 64, 3), np.uint8))
    assert len(faces) == 0 and faces.crops.shape == (0, 3, 160, 160)


def test_mtcnn_crops_and_facenet_match_fastcomposer_protocol(astronaut_faces, facenet,
                                                             astronaut):
    """Crops + FaceNetEncoder reproduce MTCNN(...)(img) -> InceptionResnetV1(img) exactly."""
    faces = astronaut_faces
    reference = MTCNN(image_size=160, margin=0, min_face_size=20, post_process=True,
                      keep_all=True)(PIL.Image.fromarray(astronaut))
    torch.testing.assert_close(faces.crops * 127.5 / 128.0, reference, atol=1e-5, rtol=0)
    with torch.no_grad():
        expected = facenet.net(reference)
        got = facenet.encode(faces.crops).global_
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_faces_select(group_faces):
    faces = group_faces
    one = faces.select(2)
    assert len(one) == 1 and np.array_equal(one.boxes[0], faces.boxes[2])
    torch.testing.assert_close(one.crops[0], faces.crops[2])
    assert len(faces.select([0, 5])) == 2 and len(faces.select(slice(1, 4))) == 3
    assert len(faces.select(faces.scores > 2.0)) == 0


def test_facenet_random_shapes_and_gradients(facenet):
    crops = (torch.rand(2, 3, 128, 128) * 2 - 1).requires_grad_(True)  # resized to 160
    features = facenet.encode(crops)
    assert features.global_.shape == (2, 512)
    assert features.local.shape == (2, 1792, 3, 3) and features.shallow.shape == (2, 896)
    torch.testing.assert_close(features.global_.norm(dim=1), torch.ones(2))
    (features.global_.sum() + features.local.mean() + features.shallow.mean()).backward()
    assert crops.grad is not None and crops.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in facenet.parameters())


def test_facenet_stays_frozen_in_eval(facenet):
    facenet.train()
    assert not facenet.training and not facenet.net.last_bn.training
    assert facenet.encode(torch.zeros(1, 3, 160, 160)).global_.shape == (1, 512)  # BN1d, B=1


def test_facenet_shallow_block_option():
    encoder = FaceNetEncoder(weights="random", shallow_block="repeat_1")
    assert encoder.shallow_dim == 256
    assert encoder.encode(torch.zeros(1, 3, 160, 160)).shallow.shape == (1, 256)
    with pytest.raises(ValueError, match="shallow_block"):
        FaceNetEncoder(weights="random", shallow_block="nope")


def test_facenet_pretrained_offline_fails_fast(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(encode_module, "download_url_to_file", no_network)
    start = time.perf_counter()
    with pytest.raises(FaceModelMissing, match="vggface2") as error:
        FaceNetEncoder(weights="vggface2")
    assert time.perf_counter() - start < 5.0
    assert str(tmp_path) in str(error.value) and "20180402-114759-vggface2.pt" in str(error.value)


def test_facenet_pretrained_from_cache(monkeypatch, facenet_home, facenet):
    """A release file already in facenet-pytorch's cache loads (its classifier is dropped)."""
    monkeypatch.setenv("TORCH_HOME", str(facenet_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = FaceNetEncoder(weights="vggface2")
    crops = torch.rand(2, 3, 160, 160) * 2 - 1
    torch.testing.assert_close(loaded.encode(crops).global_, facenet.encode(crops).global_)


def test_facenet_state_dict_path_round_trip(tmp_path, facenet_home, facenet):
    path = facenet_home / "checkpoints" / "20180402-114759-vggface2.pt"
    loaded = build_face_encoder("facenet", weights=str(path))
    crops = torch.rand(2, 3, 160, 160) * 2 - 1
    a, b = facenet.encode(crops), loaded.encode(crops)
    for x, y in [(a.global_, b.global_), (a.local, b.local), (a.shallow, b.shallow)]:
        assert torch.equal(x, y)
    with pytest.raises(FaceModelMissing, match="not found"):
        FaceNetEncoder(weights=str(tmp_path / "missing.pt"))


def test_arcface_random_shapes_and_gradients():
    torch.manual_seed(0)
    encoder = ArcFaceEncoder(weights="random", arch="r18")
    crops = (torch.rand(2, 3, 160, 160) * 2 - 1).requires_grad_(True)  # resized to 112
    features = encoder.encode(crops)
    assert features.global_.shape == (2, 512) and features.local.shape == (2, 512, 7, 7)
    assert features.shallow.shape == (2, 128)
    torch.testing.assert_close(features.global_.norm(dim=1), torch.ones(2))
    features.global_.sum().backward()
    assert crops.grad.abs().sum() > 0


def test_iresnet_has_arcface_torch_layout():
    state = IResNet("r50").state_dict()
    assert state["conv1.weight"].shape == (64, 3, 3, 3) and state["prelu.weight"].shape == (64,)
    assert state["layer1.0.downsample.0.weight"].shape == (64, 64, 1, 1)
    assert "layer3.13.bn3.running_var" in state and "layer3.14.bn1.weight" not in state
    assert state["layer4.2.prelu.weight"].shape == (512,)
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert {"bn2.running_mean", "features.weight", "features.running_var"} <= set(state)
    assert sum(k.endswith("conv2.weight") for k in state) == 3 + 4 + 14 + 3


def test_arcface_state_dict_round_trip_and_errors(tmp_path):
    torch.manual_seed(1)
    encoder = ArcFaceEncoder(weights="random", arch="r18")
    path = tmp_path / "backbone.pth"
    torch.save(encoder.net.state_dict(), path)
    crops = torch.rand(1, 3, 112, 112) * 2 - 1
    loaded = ArcFaceEncoder(weights=str(path), arch="r18")
    assert torch.equal(loaded.encode(crops).global_, encoder.encode(crops).global_)
    with pytest.raises(ValueError, match="r34"):
        ArcFaceEncoder(weights=str(path), arch="r34")
    with pytest.raises(FaceModelMissing, match="backbone.pth"):
        ArcFaceEncoder()


def test_dlib_detects_astronaut_face(dlib_models, astronaut_faces, astronaut):
    detector, _ = dlib_models
    faces = detector.detect(astronaut)
    assert len(faces) >= 1
    assert faces.crops.shape[1:] == (3, 150, 150)
    reference = astronaut_faces.boxes[0]
    assert max(_box_iou(box, reference) for box in faces.boxes) > 0.5
    assert len(DlibDetector(min_score=0.5).detect(astronaut)) == 1


def test_dlib_same_person_more_similar_than_others(dlib_models, astronaut, group_photo):
    """Real recognition: the astronaut vs a shifted, rescaled, mirrored copy of her is
    closer than the astronaut vs any person of the group photo."""
    detector, encoder = dlib_models
    moved = PIL.Image.fromarray(astronaut).crop((120, 20, 340, 260)).resize((300, 327))
    moved = np.ascontiguousarray(np.asarray(moved)[:, ::-1])
    reference = encoder.encode(detector.detect(astronaut).select(0).crops).global_
    same = encoder.encode(detector.detect(moved).select(0).crops).global_
    others = encoder.encode(detector.detect(group_photo).crops).global_
    assert len(others) >= 5 and reference.shape == (1, 128)
    same_sim, other_sim = (reference @ same.T).item(), (reference @ others.T).max().item()
    assert same_sim > 0.95 and same_sim > other_sim + 0.05


def test_dlib_encoder_on_mtcnn_crops(dlib_models, astronaut_faces):
    _, encoder = dlib_models
    features = encoder.encode(astronaut_faces.crops)  # 160 -> 150
    assert features.global_.shape == (1, 128) and features.local is None
    assert encoder.encode(torch.zeros(0, 3, 150, 150)).global_.shape == (0, 128)


def test_protocols(mtcnn, facenet, dlib_models):
    detector, dlib_encoder = dlib_models
    arcface = ArcFaceEncoder(weights="random", arch="r18")
    for candidate in (mtcnn, detector):
        assert isinstance(candidate, FaceDetector)
    for candidate in (facenet, arcface, dlib_encoder):
        assert isinstance(candidate, FaceEncoder)
        assert candidate.global_dim > 0 and candidate.input_size > 0
    assert facenet.differentiable and arcface.differentiable and not dlib_encoder.differentiable
    assert (arcface.local_dim, arcface.local_size) == (512, 7)
    assert not isinstance(object(), FaceEncoder)


def test_insightface_missing_weights(tmp_path):
    with pytest.raises(FaceModelMissing, match="buffalo_l") as error:
        InsightFaceDetector(root=str(tmp_path))
    assert str(tmp_path) in str(error.value)
    with pytest.raises(FaceModelMissing, match="w600k_r50.onnx"):
        InsightFaceEncoder(root=str(tmp_path))


class _FakeFaceAnalysis:
    """Stands in for insightface's FaceAnalysis (no weights offline): returns two faces,
    the smaller first, and records the image it was given."""

    def __init__(self, name, root, allowed_modules, providers):
        assert allowed_modules == ["detection"] and providers[-1] == "CPUExecutionProvider"
        self.seen = None

    def prepare(self, ctx_id, det_thresh, det_size):
        assert ctx_id == -1 and det_size == (640, 640)

    def get(self, image):
        self.seen = image
        small = {"bbox": np.array([10, 10, 30, 30]), "det_score": 0.9,
                 "kps": np.array([[15, 17], [25, 17], [20, 21], [16, 25], [24, 25]], np.float32)}
        large = {"bbox": np.array([181, 62, 268, 172]), "det_score": 0.99,
                 "kps": np.array([[205, 102], [247, 104], [224, 129], [204, 139], [245, 142]],
                                 np.float32)}
        weak = dict(small, det_score=0.2)
        return [type("Face", (), face) for face in (small, large, weak)]


def test_insightface_detector_wiring(monkeypatch, tmp_path, astronaut):
    import insightface.app

    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    (tmp_path / "models" / "buffalo_l" / "det_10g.onnx").write_bytes(b"")
    monkeypatch.setattr(insightface.app, "FaceAnalysis", _FakeFaceAnalysis)
    detector = InsightFaceDetector(root=str(tmp_path))
    faces = detector.detect(astronaut)
    assert np.array_equal(detector.app.seen, astronaut[:, :, ::-1])  # BGR in
    assert len(faces) == 2 and faces.scores.tolist() == pytest.approx([0.99, 0.9])
    assert faces.crops.shape == (2, 3, 112, 112) and faces.crops.std() > 0.1
    assert isinstance(detector, FaceDetector)


class _FakeArcFaceONNX:
    """Stands in for insightface's ArcFaceONNX: feature = (mean of channel 0, of channel 2)."""

    taskname = "recognition"

    def prepare(self, ctx_id):
        assert ctx_id == -1

    def get_feat(self, images):
        assert all(im.shape == (112, 112, 3) and im.dtype == np.uint8 for im in images)
        return np.stack([np.r_[im[..., 0].mean(), im[..., 2].mean(), np.zeros(510)]
                         for im in images])


def test_insightface_encoder_wiring(monkeypatch, tmp_path):
    import insightface.model_zoo

    weights = tmp_path / "w600k_r50.onnx"
    weights.write_bytes(b"")
    monkeypatch.setattr(insightface.model_zoo, "get_model",
                        lambda path, providers: _FakeArcFaceONNX())
    encoder = build_face_encoder("insightface", weights=str(weights))
    crops = -torch.ones(2, 3, 160, 160)
    crops[:, 0] = 1.0  # red
    features = encoder.encode(crops)
    assert features.global_.shape == (2, 512) and features.local is None
    torch.testing.assert_close(features.global_[:, :2], torch.tensor([[0.0, 1.0]] * 2))  # BGR
    assert isinstance(encoder, FaceEncoder) and not encoder.differentiable


def test_builders(mtcnn):
    assert isinstance(build_face_detector("mtcnn", min_score=0.5), MTCNNDetector)
    assert isinstance(build_face_encoder("arcface", weights="random", arch="r18"), ArcFaceEncoder)
    with pytest.raises(ValueError, match="unknown face detector"):
        build_face_detector("haar")
    with pytest.raises(ValueError, match="unknown face encoder"):
        build_face_encoder("vgg")


def test_similarity_fit_and_mouth_completion():
    angle, scale, shift = 0.3, 2.5, np.array([10.0, -4.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).normal(size=(6, 2))
    matrix = fit_similarity(src, src @ (scale * rotation).T + shift)
    np.testing.assert_allclose(matrix, np.hstack([scale * rotation, shift[:, None]]), atol=1e-5)
    five = complete_five_points(np.array([40.0, 50.0]), np.array([80.0, 50.0]), np.array([60, 70]))
    assert five.shape == (5, 2) and (five[3:, 1] > 70).all()
    assert five[3, 0] < 60 < five[4, 0] and abs(five[3, 1] - five[4, 1]) < 1e-3


def test_tensor_to_uint8_round_trip():
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    images = tensor_to_uint8(pixels.float() / 127.5 - 1)
    assert images.shape == (2, 8, 8, 3)
    assert np.array_equal(images, pixels.permute(0, 2, 3, 1).numpy())


def _area_ratios(boxes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(F,) area of each xyxy box over the area of its reference box."""
    def area(xyxy: np.ndarray) -> np.ndarray:
        return np.prod(xyxy[:, 2:] - xyxy[:, :2], axis=1)
    return area(boxes) / area(reference)


def _ibug68_people(image: np.ndarray, faces: Faces) -> list:
    """People whose 70 face keypoints are dlib's 68 points (+ the eye corners as pupils):
    an OpenPose-style face, the kind ``OpenPoseEstimator`` gives."""
    import dlib

    from ldm_ext.face.detect import dlib_model_path
    from ldm_ext.perception.pose import Person

    predictor = dlib.shape_predictor(dlib_model_path("shape_predictor_68_face_landmarks.dat"))
    people = []
    for box in faces.boxes:
        shape = predictor(image, dlib.rectangle(*(int(round(v)) for v in box)))
        points = np.array([(p.x, p.y) for p in shape.parts()], np.float32)  # (68, 2)
        face = np.concatenate([points, points[[36, 42]]])  # (70, 2)
        people.append(Person(body=np.zeros((18, 3)), face=np.pad(face, ((0, 0), (0, 1)),
                                                                 constant_values=1.0)))
    return people


def test_keypoint_boxes_map_to_detector_boxes_on_real_photos(astronaut, astronaut_faces,
                                                             group_photo, group_faces):
    """InstantFamily's inference regions start from pose keypoints, training's from MTCNN
    boxes: ``detector_box`` must give the detector's box size on real photos (within 10 %
    of area on average), where the plain keypoint box is about 0.76x."""
    from ldm_ext.perception.pose import Person, detector_box, face_box, people_from_faces

    ibug = []
    for image, faces in ((astronaut, astronaut_faces), (group_photo, group_faces)):
        people = people_from_faces(faces.boxes, faces.landmarks, image.shape[:2])  # prepare's
        keypoint = np.stack([face_box(p, margin=0.0) for p in people])
        mapped = np.stack([detector_box(p) for p in people])
        assert _area_ratios(keypoint, faces.boxes).mean() < 0.85
        assert abs(_area_ratios(mapped, faces.boxes).mean() - 1) <= 0.10
        assert np.mean([_box_iou(a, b) for a, b in zip(mapped, faces.boxes)]) > 0.75
        heads = [detector_box(Person(body=p.body)) for p in people]  # no face keypoints
        assert abs(_area_ratios(np.stack(heads), faces.boxes).mean() - 1) <= 0.20
        ibug += [_area_ratios(np.stack([detector_box(p) for p in _ibug68_people(image, faces)]),
                              faces.boxes)]
    assert abs(np.concatenate(ibug).mean() - 1) <= 0.10  # OpenPose-style faces, 7 faces


def test_encoder_halves_an_aligned_224_crop_by_block_means():
    """A 224 aligned crop reaches a 112-input encoder as 2x2 block means (what insightface's
    norm_crop gives at 112), not as a bilinear resample of it."""
    from ldm_ext.face.encode import _resize

    crops = torch.rand(2, 3, 224, 224)
    torch.testing.assert_close(_resize(crops, 112), crops.unflatten(-1, (112, 2))
                               .unflatten(-3, (112, 2)).mean((-1, -3)))
    assert _resize(crops[..., :200, :200], 112).shape[-2:] == (112, 112)  # other sizes

"""Face encoders behind the :class:`~ldm_ext.face.types.FaceEncoder` protocol.

* ``facenet``: facenet-pytorch InceptionResnetV1 (default of InstantFamily and
  PortraitBooth, docs/methods.md Sec. 1 and 4; the FastComposer metric). Global 512-d,
  local = ``block8`` map (1792, 3, 3), shallow = pooled output of an early block.
* ``arcface``: IResNet in the arcface_torch layout (global 512-d, local (512, 7, 7)).
* ``insightface``: buffalo_l's ONNX ArcFace ``w600k_r50`` (StoryMaker's Face Sim), global only.
* ``dlib``: dlib's 128-d ResNet descriptor (ships offline), global only.

Torch encoders are frozen and stay in inference mode (BatchNorm statistics, no dropout)
even when a parent module is put in training mode; gradients still flow to the input
crops (PortraitBooth's identity loss, Eq. 6). Every global embedding is L2-normalised.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from facenet_pytorch import InceptionResnetV1
from facenet_pytorch.models.inception_resnet_v1 import get_torch_home
from facenet_pytorch.models.utils.download import download_url_to_file
from torch import nn

from ldm_ext.weights import CheckpointError, load_checkpoint

from .align import tensor_to_uint8
from .detect import dlib_model_path
from .iresnet import IResNet
from .types import FaceEncoder, FaceFeatures, FaceModelMissing

__all__ = ["FaceModelMissing", "FaceNetEncoder", "ArcFaceEncoder", "DlibEncoder",
           "InsightFaceEncoder", "build_face_encoder"]

FACENET_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
FACENET_FILES = {"vggface2": "20180402-114759-vggface2.pt",
                 "casia-webface": "20180408-102900-casia-webface.pt"}
# InceptionResnetV1 trunk in forward order, with each block's output channels.
FACENET_TRUNK = {"conv2d_1a": 32, "conv2d_2a": 32, "conv2d_2b": 64, "maxpool_3a": 64,
                 "conv2d_3b": 80, "conv2d_4a": 192, "conv2d_4b": 256, "repeat_1": 256,
                 "mixed_6a": 896, "repeat_2": 896, "mixed_7a": 1792, "repeat_3": 1792,
                 "block8": 1792}
IRESNET_STAGES = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _load_state_dict(path: str, model: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pt``/``.pth`` state dict (also inside a ``{"state_dict": ...}``),
    read weights-only: a file holding pickled objects is refused in one line naming it."""
    if not os.path.isfile(path):
        raise FaceModelMissing(f"{model} weights '{path}' not found: pass the path of a saved "
                               "state dict (.pt/.pth), or 'random' for a random initialisation.")
    state = load_checkpoint(path)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a {model} state dict (name -> tensor)")
    return state


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], path: str, model: str) -> None:
    """``net.load_state_dict(state)``; names or shapes that do not fit (another network,
    another depth) are a ``CheckpointError`` naming the file."""
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        detail = str(error).splitlines()[1 if "\n" in str(error) else 0].strip()
        raise CheckpointError(f"{path}: not a {model} state dict (wrong network or "
                              f"depth?): {detail[:160]}") from None


def facenet_checkpoint(name: str) -> str:
    """Local file of facenet-pytorch's pretrained weights ``name``, downloading it with
    facenet-pytorch's own helper into its cache unless ``HF_HUB_OFFLINE`` is set."""
    url = FACENET_RELEASE + FACENET_FILES[name]
    path = os.path.join(get_torch_home(), "checkpoints", FACENET_FILES[name])
    if os.path.exists(path):
        return path
    hint = (f"FaceNet InceptionResnetV1 '{name}' weights not found at {path}: download {url} "
            "there (or set TORCH_HOME), or pass weights=<state dict path> or 'random'")
    if _offline():
        raise FaceModelMissing(hint + " (HF_HUB_OFFLINE is set: no download was tried).")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        download_url_to_file(url, path)
    except (OSError, ValueError) as error:
        raise FaceModelMissing(f"{hint}. Download failed: {error}") from error
    return path


def _resize(crops: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, S, S) crops to (B, 3, size, size): block means when S is a multiple of size
    (a 224 aligned crop halved is exactly the 112 ArcFace template, as insightface's own
    norm_crop gives it), else an antialiased bilinear resize."""
    height, width = crops.shape[-2:]
    if (height, width) == (size, size):
        return crops
    if height == width and height % size == 0:
        return F.avg_pool2d(crops, height // size)
    return F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


class _FrozenEncoder(nn.Module):
    """Frozen feature extractor kept in inference mode; ``encode`` is its forward."""

    input_size: int

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> _FrozenEncoder:
        """Stay in inference mode whatever ``mode`` is (the networks are never trained here)."""
        return super().train(False)

    def encode(self, crops: torch.Tensor) -> FaceFeatures:
        """Features of (B, 3, S, S) crops in [-1, 1]."""
        return self(crops)

    def _prepare(self, crops: torch.Tensor) -> torch.Tensor:
        weight = next(self.parameters())
        return _resize(crops.to(device=weight.device, dtype=weight.dtype), self.input_size)


class FaceNetEncoder(_FrozenEncoder):
    """FaceNet (InceptionResnetV1) global, local and shallow features in one forward.

    Args:
        weights: "vggface2" | "casia-webface" (facenet-pytorch's release files), a path
            to a state dict, or "random" (random init, for tests and the offline demo).
        shallow_block: trunk block whose globally pooled output is the shallow feature
            (PortraitBooth's phi, Eq. 4); default "mixed_6a" (896-d).
    """

    name = "facenet"
    input_size = 160
    global_dim = 512
    local_dim = 1792
    local_size = 3
    differentiable = True

    def __init__(self, weights: str = "vggface2", shallow_block: str = "mixed_6a") -> None:
        super().__init__()
        if shallow_block not in FACENET_TRUNK:
            raise ValueError(f"shallow_block '{shallow_block}' not in {list(FACENET_TRUNK)}")
        self.weights = weights
        self.shallow_block = shallow_block
        self.shallow_dim = FACENET_TRUNK[shallow_block]
        self.net = InceptionResnetV1()
        if weights != "random":
            path = facenet_checkpoint(weights) if weights in FACENET_FILES else weights
            state = _load_state_dict(path, "FaceNet InceptionResnetV1")
            _load_into(self.net, {k: v for k, v in state.items()  # classifier unused
                                  if not k.startswith("logits.")}, path, "FaceNet")
        self._freeze()

    def forward(self, crops: torch.Tensor) -> FaceFeatures:
        """Features of (B, 3, S, S) crops in [-1, 1] (pixels p as p / 127.5 - 1)."""
        # FaceNet was trained on facenet-pytorch's fixed standardisation (p - 127.5) / 128.
        x = self._prepare(crops) * (127.5 / 128.0)
        shallow = None
        for name in FACENET_TRUNK:
            x = getattr(self.net, name)(x)
            if name == self.shallow_block:
                shallow = x.mean(dim=(2, 3))  # (B, C)
        pooled = self.net.avgpool_1a(x).flatten(1)  # (B, 1792); dropout is off in eval
        embedding = self.net.last_bn(self.net.last_linear(pooled))
        return FaceFeatures(F.normalize(embedding, p=2, dim=1), local=x, shallow=shallow)


class ArcFaceEncoder(_FrozenEncoder):
    """ArcFace IResNet global (512), local (512, 7, 7) and shallow features.

    Args:
        weights: path to an arcface_torch ``backbone.pth`` state dict, or "random".
        arch: "r18" | "r34" | "r50" | "r100" | "r200", matching the weights.
        shallow_block: "layer1".."layer4"; its pooled output is the shallow feature.
    """

    name = "arcface"
    input_size = 112
    global_dim = 512
    local_dim = 512
    local_size = 7
    differentiable = True

    def __init__(self, weights: str | None = None, arch: str = "r100",
                 shallow_block: str = "layer2") -> None:
        super().__init__()
        if weights is None:
            raise FaceModelMissing(
                f"ArcFace {arch} needs weights: pass the path of an arcface_torch backbone.pth "
                "(insightface model zoo: ms1mv3/glint360k IResNet), or 'random'.")
        if shallow_block not in IRESNET_STAGES:
            raise ValueError(f"shallow_block '{shallow_block}' not in {list(IRESNET_STAGES)}")
        self.weights = weights
        self.arch = arch
        self.shallow_block = shallow_block
        self.shallow_dim = IRESNET_STAGES[shallow_block]
        self.net = IResNet(arch)
        if weights != "random":
            model = f"arcface_torch IResNet-{arch}"
            _load_into(self.net, _load_state_dict(weights, model), weights, model)
        self._freeze()

    def forward(self, crops: torch.Tensor) -> FaceFeatures:
        """Features of (B, 3, S, S) crops in [-1, 1], ArcFace-aligned (arcface_torch's
        input normalisation (p / 255 - 0.5) / 0.5 is exactly this range)."""
        x = self._prepare(crops)
        shallow = None
        for name, module in self.net.trunk():
            x = module(x)
            if name == self.shallow_block:
                shallow = x.mean(dim=(2, 3))  # (B, C)
        return FaceFeatures(F.normalize(self.net.head(x), p=2, dim=1), local=x, shallow=shallow)


class DlibEncoder:
    """dlib ResNet face descriptor (128-d); global only, not differentiable.

    Best on ``DlibDetector`` crops (``get_face_chip`` alignment, 150x150).

    Args:
        weights: path of ``dlib_face_recognition_resnet_model_v1.dat``; default the
            copy in ``face_recognition_models``.
    """

    name = "dlib"
    input_size = 150
    global_dim = 128
    local_dim = 0
    local_size = 0
    shallow_dim = 0
    differentiable = False

    def __init__(self, weights: str | None = None) -> None:
        import dlib

        path = weights or dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")
        if not os.path.isfile(path):
            raise FaceModelMissing(f"dlib face recognition model '{path}' not found.")
        self.model = dlib.face_recognition_model_v1(path)

    def encode(self, crops: torch.Tensor) -> FaceFeatures:
        """Descriptors of (B, 3, S, S) crops in [-1, 1]."""
        chips = list(tensor_to_uint8(crops, self.input_size))  # B x (150, 150, 3)
        vectors = np.array(self.model.compute_face_descriptor(chips)) if chips else np.zeros(0)
        descriptors = torch.as_tensor(vectors, dtype=torch.float32).reshape(-1, self.global_dim)
        return FaceFeatures(F.normalize(descriptors, dim=1).to(crops.device))


class InsightFaceEncoder:
    """insightface ONNX ArcFace (buffalo_l ``w600k_r50.onnx``); global only.

    Expects ArcFace-aligned crops (``InsightFaceDetector``).

    Args:
        weights: path of the recognition ``.onnx``; default
            ``<root>/models/buffalo_l/w600k_r50.onnx``.
        root: insightface root folder.
        device: "cpu" or "cuda" (onnxruntime execution provider).
    """

    name = "insightface"
    input_size = 112
    global_dim = 512
    local_dim = 0
    local_size = 0
    shallow_dim = 0
    differentiable = False

    def __init__(self, weights: str | None = None, root: str = "~/.insightface",
                 device: str = "cpu") -> None:
        from insightface.model_zoo import get_model

        path = weights or os.path.join(os.path.expanduser(root), "models", "buffalo_l",
                                       "w600k_r50.onnx")
        if not os.path.isfile(path):
            raise FaceModelMissing(
                f"insightface ArcFace ONNX model not found at {path}: unzip the buffalo_l "
                "pack (insightface model zoo) into <root>/models/buffalo_l, or pass "
                "weights=<path of the .onnx>.")
        cuda = device.startswith("cuda")
        providers = ["CPUExecutionProvider"]
        if cuda:
            providers.insert(0, "CUDAExecutionProvider")
        self.model = get_model(path, providers=providers)
        if getattr(self.model, "taskname", None) != "recognition":
            raise ValueError(f"{path} is not an insightface recognition model")
        self.model.prepare(ctx_id=0 if cuda else -1)

    def encode(self, crops: torch.Tensor) -> FaceFeatures:
        """Embeddings of (B, 3, S, S) crops in [-1, 1] (insightface takes BGR uint8)."""
        rgb = tensor_to_uint8(crops, self.input_size)  # (B, 112, 112, 3)
        bgr = [np.ascontiguousarray(image[:, :, ::-1]) for image in rgb]
        vectors = self.model.get_feat(bgr) if bgr else np.zeros((0, self.global_dim))
        embeddings = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
        return FaceFeatures(F.normalize(embeddings, dim=1).to(crops.device))


ENCODERS = {"facenet": FaceNetEncoder, "arcface": ArcFaceEncoder, "dlib": DlibEncoder,
            "insightface": InsightFaceEncoder}


def build_face_encoder(name: str, weights: str | None = None, **kwargs) -> FaceEncoder:
    """Encoder by name ("facenet" | "arcface" | "dlib" | "insightface").

    ``weights=None`` keeps the backend's default (FaceNet "vggface2", the packaged dlib
    model, buffalo_l's ONNX; ArcFace has none and raises ``FaceModelMissing``).
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown face encoder '{name}', choose from {sorted(ENCODERS)}")
    if weights is not None:
        kwargs["weights"] = weights
    return ENCODERS[name](**kwargs)

"""Improved ResNet (IResNet) face-recognition backbone, ArcFace (Deng et al. 2019).

Module names and shapes follow insightface's ``recognition/arcface_torch`` backbones, so
their released ``backbone.pth`` state dicts (r18/r34/r50/r100/r200, e.g. ms1mv3, glint360k)
load with ``strict=True``. Input: 112x112 RGB in [-1, 1]; the last conv map is 512x7x7.
"""
from __future__ import annotations

import torch
from torch import nn

ARCHS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3),
         "r100": (3, 13, 30, 3), "r200": (6, 26, 60, 6)}
STAGE_WIDTHS = (64, 128, 256, 512)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN-conv-BN-PReLU-conv(stride)-BN (+ shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet trunk + BN-Dropout-FC-BN embedding head (512-d by default).

    Args:
        arch: "r18" | "r34" | "r50" | "r100" | "r200".
        num_features: embedding width.
        dropout: dropout before the FC layer (training only).
    """

    fc_scale = 7 * 7  # spatial size of the last map for 112x112 inputs

    def __init__(self, arch: str = "r100", num_features: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown IResNet arch '{arch}', choose from {sorted(ARCHS)}")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for index, (depth, width) in enumerate(zip(ARCHS[arch], STAGE_WIDTHS), start=1):
            blocks = [IBasicBlock(cin, width, stride=2)]
            blocks += [IBasicBlock(width, width) for _ in range(depth - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            cin = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)

    def trunk(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of the convolutional trunk in forward order, ending at ``bn2``."""
        names = ["conv1", "bn1", "prelu", "layer1", "layer2", "layer3", "layer4", "bn2"]
        return [(name, getattr(self, name)) for name in names]

    def head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Embedding (B, num_features) from the last map (B, 512, 7, 7)."""
        return self.features(self.fc(self.dropout(feature_map.flatten(1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self.trunk():
            x = module(x)
        return self.head(x)

"""Backbones returning pooled, post-ReLU features (so features are >= 0), plus a linear head."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from glag.errors import GlagError, user_code
from glag.extract.pretrained import TorchvisionBackbone, is_torchvision
from glag.registry import add


class _BasicBlockA(nn.Module):
    """CIFAR ResNet basic block with the parameter-free 'option A' shortcut (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:
            short = F.pad(
                x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)
            )
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """ResNet-6n+2 for small images; ResNet-32 is n = 5 (widths 16/32/64, d = 64)."""

    def __init__(self, n: int = 5, in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, w in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(_BasicBlockA(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.feature_dim = 64
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class SmallCNN(nn.Module):
    """Three conv layers for tiny images (the 8x8 digits default), d = 64."""

    def __init__(self, in_channels: int = 1, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.feature_dim = width

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)


class TorchvisionResNet(nn.Module):
    """torchvision ResNet trunk without its fc layer (ResNet-10 = BasicBlock x [1,1,1,1])."""

    def __init__(self, depth: int, in_channels: int = 3):
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.models.resnet import BasicBlock, ResNet

        net = ResNet(BasicBlock, [1, 1, 1, 1]) if depth == 10 else resnet50(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x):
        return self.net(x)


BACKBONES: dict = {}  # name -> build(in_channels) -> nn.Module with a .feature_dim (also torchvision:NAME)


def register_backbone(name: str):
    """Decorator: make ``build(in_channels) -> feature extractor`` the backbone ``name``."""

    def deco(build):
        add(BACKBONES, name, build, "backbone", fn=build, args=1)
        return build

    return deco


register_backbone("resnet32")(lambda c: CifarResNet(5, c))
register_backbone("resnet10")(lambda c: TorchvisionResNet(10, c))
register_backbone("resnet50")(lambda c: TorchvisionResNet(50, c))
register_backbone("cnn")(lambda c: SmallCNN(c))


class CosineHead(nn.Module):
    """``s * cos(f, w_c)``: features and class weights L2-normalised, no bias (LDAM's NormedLinear,
    scaled)."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-1, 1))
        self.scale = scale

    def forward(self, x):
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T


HEADS = ("linear", "cosine")
COSINE_SCALE = 30.0


def make_head(head: str, in_features: int, num_classes: int) -> nn.Module:
    if head == "linear":
        return nn.Linear(in_features, num_classes)
    if head == "cosine":
        return CosineHead(in_features, num_classes, COSINE_SCALE)
    raise GlagError(f"unknown head '{head}'; choose one of: {', '.join(HEADS)}")


class Classifier(nn.Module):
    """Backbone + head (linear, or cosine for LDAM); ``forward`` returns logits, ``features`` the pooled
    features."""

    def __init__(self, backbone: str, num_classes: int, in_channels: int, head: str = "linear"):
        super().__init__()
        if is_torchvision(backbone):
            self.backbone = TorchvisionBackbone(backbone)
        elif backbone in BACKBONES:
            with user_code(f"backbone '{backbone}'", BACKBONES[backbone]):
                self.backbone = BACKBONES[backbone](in_channels)
            dim = getattr(self.backbone, "feature_dim", None)
            if not isinstance(self.backbone, nn.Module) or not isinstance(dim, int) or dim < 1:
                raise GlagError(
                    f"backbone '{backbone}' built {type(self.backbone).__name__}, not a torch module "
                    f"with a positive integer feature_dim (got {dim!r}); see 'Add your own' in docs/usage.md"
                )
        else:
            raise GlagError(
                f"unknown backbone '{backbone}'; choose one of: {', '.join(BACKBONES)} or torchvision:NAME"
            )
        self.head_type = head
        self.head = make_head(head, self.backbone.feature_dim, num_classes)

    def head_arrays(self) -> tuple:
        """(weight, bias, head attributes) as the cache stores them; a cosine head has a zero bias."""
        w = self.head.weight.detach().float().cpu().numpy()
        if self.head_type == "cosine":
            return w, np.zeros(len(w), np.float32), {"head": "cosine", "scale": float(self.head.scale)}
        return w, self.head.bias.detach().float().cpu().numpy(), {"head": "linear", "scale": 1.0}

    def features(self, x):
        return self.backbone(x)

    def forward(self, x):
        return self.head(self.backbone(x))

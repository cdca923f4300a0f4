"""The architectures of the smoothing and adversarial-training literature."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from smoothguard.models.noise import add_noise_injection


def _flat_size(features: nn.Module, in_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *in_shape)).numel())


class LeNet(nn.Module):
    """conv5(20) - maxpool2 - conv5(50) - maxpool2 - fc(500) - fc(K), ReLU activations.

    The LeNet of the MNIST randomized-smoothing experiments (Salman et al. 2019).
    ``noise_injection``: None or a kind of :data:`smoothguard.models.noise.NOISE_INJECTIONS`
    (learned noise on every conv/linear layer: PNI or CNI).
    """

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], noise_injection: str | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(_flat_size(self.features, in_shape), 500)
        self.fc2 = nn.Linear(500, num_classes)
        if noise_injection is not None:
            add_noise_injection(self, noise_injection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class MadryCNN(nn.Module):
    """conv5(32, same) - maxpool2 - conv5(64, same) - maxpool2 - fc(1024) - fc(K).

    The MNIST network of Madry et al. (ICLR 2018). ``noise_injection``: as :class:`LeNet`.
    """

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], noise_injection: str | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(_flat_size(self.features, in_shape), 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        if noise_injection is not None:
            add_noise_injection(self, noise_injection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): depth = 6n + 2, stages of 16/32/64 channels.

    ResNet-110 is the base classifier of Cohen et al. and Salman et al. on CIFAR-10.
    """

    def __init__(self, depth: int, num_classes: int, in_shape: tuple[int, int, int]) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_shape[0], 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

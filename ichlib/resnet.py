"""ResNet-18/34/50 in plain ``torch.nn``, interchangeable with torchvision's.

Importing torchvision costs about 1.8 s on the developers' CPU, most of it ``torch._dynamo``
pulled in by ``torchvision.ops``, so ``ichlib predict`` builds its trunk here instead. The
modules are named and shaped as in ``torchvision.models.resnet18/34/50``, so their
``state_dict()`` keys and shapes are the same and torchvision's weights (and every ichlib
checkpoint) load unchanged. The forward pass is the same sequence of operations, and the
initialisation is the same too: the modules are built in torchvision's order, then every
convolution gets Kaiming-normal (fan-out) weights and every BatchNorm weight 1 and bias 0,
so a seeded model equals the seeded torchvision one.

Only the configurations ichlib uses are built: no groups, width multipliers, dilation or
zero-initialised residuals.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free convolution padded to keep the size (up to the stride)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2, bias=False)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """The 1x1 convolution + BatchNorm that brings a block's input to its output's shape."""
    return nn.Sequential(_conv(in_channels, out_channels, 1, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34).

    Args:
        in_channels: Channels of the block's input.
        planes: Channels of both convolutions and of the output.
        stride: Stride of the first convolution (and of the shortcut).
        downsample: The shortcut's projection, or None for the identity.
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, and a shortcut (ResNet-50).

    Args:
        in_channels: Channels of the block's input.
        planes: Channels of the two inner convolutions; the output has ``4 * planes``.
        stride: Stride of the 3x3 convolution (and of the shortcut).
        downsample: The shortcut's projection, or None for the identity.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The three convolutions with BatchNorm and ReLU, plus the shortcut, then ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(nn.Module):
    """A ResNet for RGB images: stem, four stages, global average pooling, linear head.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: Blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: Outputs of ``fc``.

    Attributes:
        conv1, bn1, relu, maxpool: The stem (7x7 stride-2 convolution, 3x3 stride-2 pooling).
        layer1 .. layer4: The stages, ``nn.Sequential`` of blocks; 64, 128, 256, 512 planes.
        avgpool: Global average pooling to ``[N, F, 1, 1]``.
        fc: ``F -> num_classes`` (``F = 512 * block.expansion``).
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, layers[0], stride=1)
        self.layer2 = self._stage(block, 128, layers[1], stride=2)
        self.layer3 = self._stage(block, 256, layers[2], stride=2)
        self.layer4 = self._stage(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _stage(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
               stride: int) -> nn.Sequential:
        """``blocks`` blocks of ``planes``; the first strides and projects the shortcut if needed."""
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            downsample = _downsample(self.inplanes, out_channels, stride)
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_channels
        stage += [block(out_channels, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` images -> ``[N, num_classes]`` (``[N, F]`` with ``fc`` an identity)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18: basic blocks, (2, 2, 2, 2) per stage, 512 features."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
    """ResNet-34: basic blocks, (3, 4, 6, 3) per stage, 512 features."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50: bottleneck blocks, (3, 4, 6, 3) per stage, 2048 features."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)

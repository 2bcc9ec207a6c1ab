"""Models of docs/method.md §5: ConvNet-3 (instance norm) and instance-norm ResNet-18/50 with the CIFAR stem.

Every model has ``embed(x)`` (penultimate features) and ``forward(x)`` (logits). All use
GroupNorm with one group per channel, so a sample's output never depends on the rest of its
batch — the property that lets Blend optimise all clusters in one batched pass.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import plain_number


def _instance_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels, channels, affine=True)


class ConvNet3(nn.Module):
    """ConvNet-3: 3 x [Conv3x3(width) -> GroupNorm(width, width) -> ReLU -> AvgPool2x2] -> Linear.

    For 1-channel 28x28 input the first convolution pads by 3 (28 -> 32), so every supported input
    (1 or 3 channels, 28 or 32 px) yields ``width * 4 * 4`` features (2048 at width 128).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 128,
                 depth: int = 3):
        super().__init__()
        if in_channels < 1 or num_classes < 1 or width < 1 or depth < 1:
            raise ValueError("ConvNet3: in_channels, num_classes, width and depth must be >= 1")
        layers: list[nn.Module] = []
        size = image_size
        channels = in_channels
        for i in range(depth):
            pad = 3 if (i == 0 and image_size == 28) else 1
            layers += [nn.Conv2d(channels, width, 3, padding=pad), _instance_norm(width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            size = (size + 2 * pad - 2) // 2
            channels = width
        if size < 1:
            raise ValueError(f"ConvNet3: image_size {image_size} is too small for depth {depth}")
        self.features = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.image_size = image_size
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _instance_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _instance_norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _instance_norm(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _instance_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _instance_norm(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = _instance_norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _instance_norm(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNetIN(nn.Module):
    """ResNet with the CIFAR stem (3x3 conv, stride 1, no max-pool) and GroupNorm(C, C)."""

    def __init__(self, block, layers: list[int], in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = _instance_norm(64)
        stages = []
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)  # = the 4x4 average pool at 32 px input
        self.feature_dim = cin
        self.linear = nn.Linear(cin, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return self.pool(self.layers(out)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.embed(x))


def resnet18_in(in_channels: int = 3, num_classes: int = 10) -> ResNetIN:
    return ResNetIN(_BasicBlock, [2, 2, 2, 2], in_channels, num_classes)


def resnet50_in(in_channels: int = 3, num_classes: int = 10) -> ResNetIN:
    return ResNetIN(_Bottleneck, [3, 4, 6, 3], in_channels, num_classes)


def random_convnet(in_channels: int, image_size: int, seed: int, num_classes: int = 10,
                   device: torch.device | str | None = None, width: int = 128) -> ConvNet3:
    """A seeded, randomly initialised, never trained ConvNet-3 in eval mode with frozen weights
    (the grouping extractor ``f_g`` and the Blend matcher ``f_m`` of docs/method.md §1; ``width``
    128 is the paper's, a narrower one is a cheaper Blend matcher, e.g. the fast preset's 64)."""
    in_channels, image_size, seed, num_classes, width = map(plain_number, (in_channels, image_size, seed, num_classes,
                                                                           width))  # numpy integers too
    for name, value in (("in_channels", in_channels), ("image_size", image_size), ("num_classes", num_classes),
                        ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"random_convnet: {name} must be an int >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"random_convnet: seed must be an int, got {type(seed).__name__}")
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        net = ConvNet3(in_channels, num_classes, image_size, width=width)
    finally:
        torch.random.set_rng_state(gen_state)
    net.eval().requires_grad_(False)
    return net.to(device) if device is not None else net


MODELS = {"convnet3": ConvNet3, "resnet18": resnet18_in, "resnet50": resnet50_in}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int = 32) -> nn.Module:
    """Model by name: ``convnet3``, ``resnet18`` or ``resnet50`` (instance-norm variants)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key == "convnet3":
        return ConvNet3(in_channels, num_classes, image_size)
    if key == "resnet18":
        return resnet18_in(in_channels, num_classes)
    if key == "resnet50":
        return resnet50_in(in_channels, num_classes)
    raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")

"""Reference models for the lab: MLP, VGG-style plain CNN, the CIFAR VGG and ResNet of the GradInit
paper (no torchvision).

All take `in_channels` (default 1) and `num_classes` (default 10). `mlp`, `vgg` and `resnet` work
on 8x8 digits, 28x28 Fashion-MNIST and 32x32 images; `cifar-vgg` (the paper's layer lists, five
pooled stages down to 1x1) needs 32x32. Layers keep PyTorch's constructor initialization, so the
registry's "default" method means PyTorch's default (Kaiming-uniform with a = sqrt(5)), unless
`authors_init` replaces it with the GradInit code's constructor init. The final layer is always
called `classifier`. Convs have biases exactly where batch norm is absent.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.residual import mark_residual_branch

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}
MODELS = ("mlp", "vgg", "cifar-vgg", "resnet")
# The CIFAR VGGs of the GradInit code (models/vgg.py; Simonyan & Zisserman's configurations):
# conv widths at width 64, "M" a 2x2 max-pool.
CIFAR_VGG_LAYERS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; available: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """`depth` Linear layers (depth - 1 hidden layers of `width`), flattening the image first."""

    def __init__(self, in_features: int = 64, *, depth: int = 4, width: int = 128,
                 activation: str = "relu", num_classes: int = 10):
        super().__init__()
        if depth < 1:
            raise ValueError(f"an MLP needs depth >= 1, got {depth}")
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth - 1):
            layers += [nn.Linear(in_features if i == 0 else width, width), _activation(activation)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width if depth > 1 else in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv3x3(c_in: int, c_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


def vgg_stages(depth: int) -> list[int]:
    """Conv layers per stage, spread over 4 stages, the extra ones in the later stages
    (11 -> [2, 3, 3, 3], 13 -> [3, 3, 3, 4], 16 -> [4, 4, 4, 4], 19 -> [4, 5, 5, 5])."""
    if depth < 4:
        raise ValueError(f"a VGG needs at least 4 conv layers (one per stage), got {depth}")
    per, extra = divmod(depth, 4)
    return [per + (1 if i >= 4 - extra else 0) for i in range(4)]


class VGG(nn.Module):
    """A plain CNN: 3x3 convs (+BN) + ReLU in 4 stages of width w, 2w, 4w, 8w, a 2x2 max-pool
    after each stage while the feature map is at least 2 pixels wide, global average pooling
    and one Linear classifier (as in the CIFAR VGGs of the GradInit paper, which end 1x1)."""

    def __init__(self, in_channels: int = 1, *, depth: int = 11, width: int = 64, bn: bool = False,
                 num_classes: int = 10, image_size: int = 28):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for stage, n in enumerate(vgg_stages(depth)):
            for _ in range(n):
                c_out = width * 2 ** stage
                layers.append(conv3x3(c, c_out, bias=not bn))
                if bn:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU(inplace=True))
                c = c_out
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)                                 # (B, 8w, h, w)
        return self.classifier(h.mean(dim=(2, 3)))           # (B, classes)


class CifarVGG(nn.Module):
    """The GradInit paper's VGG (its models/vgg.py): the layer list of `CIFAR_VGG_LAYERS[depth]`,
    3x3 convs (+BN) + ReLU, five 2x2 max-pools taking 32x32 to 1x1, flatten, one Linear.
    `width` is the first conv's channels (the paper: 64); every layer is scaled by width / 64."""

    def __init__(self, in_channels: int = 1, *, depth: int = 19, width: int = 64, bn: bool = False,
                 num_classes: int = 10, image_size: int = 32):
        super().__init__()
        if depth not in CIFAR_VGG_LAYERS:
            raise ValueError(f"the CIFAR VGG has depth 11, 13, 16 or 19, got {depth}")
        if image_size % 32:
            raise ValueError(f"the CIFAR VGG needs 32x32 inputs (five 2x2 pools), got "
                             f"{image_size}x{image_size}: zero-pad the images to 32 (compare's "
                             "pad_to=32, which the authors-cnn recipe sets)")
        layers: list[nn.Module] = []
        c = in_channels
        for v in CIFAR_VGG_LAYERS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            c_out = max(1, round(int(v) * width / 64))
            layers.append(conv3x3(c, c_out, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * (image_size // 32) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))  # (B, c, 1, 1) -> (B, classes)


class BasicBlock(nn.Module):
    """relu(shortcut(x) + scale * branch(x)); branch = conv(+bn), relu, conv(+bn).

    The shortcut is He et al.'s "option A": identity, or stride-2 subsampling with zero-padded
    extra channels when the block changes shape; with BN the subsampled input passes a BN first
    (as in the GradInit code's resnet_cifar.py). The branch is marked for Fixup/SkipInit with
    `mark_residual_branch`, `scale` being its multiplier (1 at the start; the GradInit code's
    ResNet has none, its Fixup ResNet has one).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, bn: bool = False):
        super().__init__()
        layers: list[nn.Module] = [conv3x3(c_in, c_out, stride, bias=not bn)]
        if bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(inplace=True), conv3x3(c_out, c_out, bias=not bn)]
        if bn:
            layers.append(nn.BatchNorm2d(c_out))
        self.branch = nn.Sequential(*layers)
        self.scale = nn.Parameter(torch.ones(()))
        self.stride, self.extra_channels = stride, c_out - c_in
        self.shortcut_bn = nn.BatchNorm2d(c_in) if bn and stride > 1 else None
        mark_residual_branch(self.branch, scale=self.scale)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
            if self.shortcut_bn is not None:
                x = self.shortcut_bn(x)
        if self.extra_channels > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # zeros for the new channels
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.scale * self.branch(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, §4.2): depth = 6n + 2 (20, 32, 56, 110).

    conv3x3 (+bn) + relu, then 3 stages of n blocks at widths w, 2w, 4w (stride 2 between
    stages), global average pooling and a Linear classifier.
    """

    def __init__(self, in_channels: int = 1, *, depth: int = 20, width: int = 16,
                 bn: bool = False, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 56, 110), got {depth}")
        n = (depth - 2) // 6
        stem: list[nn.Module] = [conv3x3(in_channels, width, bias=not bn)]
        if bn:
            stem.append(nn.BatchNorm2d(width))
        self.stem = nn.Sequential(*stem, nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        c = width
        for stage in range(3):
            for i in range(n):
                c_out = width * 2 ** stage
                blocks.append(BasicBlock(c, c_out, 2 if stage > 0 and i == 0 else 1, bn))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))                        # (B, 4w, H/4, W/4)
        return self.classifier(h.mean(dim=(2, 3)))


def build_model(name: str, *, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                depth: int | None = None, width: int | None = None, bn: bool = False,
                activation: str = "relu", **kw: Any) -> nn.Module:
    """A lab model by name; `depth` and `width` default to each model's own defaults."""
    sized: dict[str, Any] = {k: v for k, v in {"depth": depth, "width": width}.items()
                             if v is not None}
    if name == "mlp":
        if bn:
            raise ValueError("the lab's MLP has no batch-norm variant; drop bn=True")
        return MLP(in_channels * image_size ** 2, activation=activation,
                   num_classes=num_classes, **sized, **kw)
    if name == "transformer":  # translation: `depth` layers per stack, width d_model; vocab_size=
        from .translation.model import TransformerConfig, TranslationTransformer
        sizes = {"encoder_layers": depth, "decoder_layers": depth, "d_model": width}
        return TranslationTransformer(TransformerConfig(
            **{k: v for k, v in sizes.items() if v is not None}, **kw))
    if activation != "relu":
        raise ValueError(f"{name} uses ReLU; activation= applies to the MLP only")
    if name == "vgg":
        return VGG(in_channels, bn=bn, num_classes=num_classes, image_size=image_size,
                   **sized, **kw)
    if name == "cifar-vgg":
        return CifarVGG(in_channels, bn=bn, num_classes=num_classes, image_size=image_size,
                        **sized, **kw)
    if name == "resnet":
        return ResNet(in_channels, bn=bn, num_classes=num_classes, **sized, **kw)
    raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")


@torch.no_grad()
def authors_init(model: nn.Module) -> nn.Module:
    """The GradInit code's constructor init, in place (models/vgg.py, models/resnet_cifar.py):
    convs Kaiming-normal, fan_out, ReLU gain, biases 0; batch norm weight 1, bias 0; the VGGs'
    classifier N(0, 0.01) with bias 0, the ResNet's classifier bias 0 (its weight keeps
    PyTorch's draw). Draws from torch's global generator."""
    if not isinstance(model, (VGG, CifarVGG, ResNet)):
        raise ValueError(f"the authors' constructor init is defined for their CNNs (vgg, "
                         f"cifar-vgg, resnet), not {type(model).__name__}: use "
                         "constructor_init='pytorch'")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(1.0)
            m.bias.zero_()
    if isinstance(model, (VGG, CifarVGG)):
        nn.init.normal_(model.classifier.weight, 0.0, 0.01)
    model.classifier.bias.zero_()
    return model


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    params: Sequence[nn.Parameter] = [p for p in model.parameters()
                                      if p.requires_grad or not trainable_only]
    return sum(p.numel() for p in params)

"""EfficientNet B0/B1/B3/B7 in the lukemelas efficientnet_pytorch 0.6.3 layout: its state-dict keys and its static "same" padding.

0.6.3 computes TF "same" padding once, for the variant's nominal image size (B0 224, B1 240,
B3 300, B7 600), and applies that padding at EVERY layer whatever the real feature-map size is
(0.7.0 fixed this per stage). Checkpoints trained with 0.6.3 (WM's WS-DAN trunk, NTechLab's B7s,
Eighteen Years Old's B0/B1/B3) expect exactly that arithmetic, so it is reproduced here.
NTechLab's sequence model swaps each expanding block's 1x1 `_expand_conv` for a 3x1x1 Conv3d over
7 consecutive frames (`seq_length`); its key becomes `_blocks.N._expand_conv.conv.weight`.

Written from efficientnet_pytorch 0.6.3 (model.py, utils.py; Apache-2.0) and IQTLabs/FakeFinder
780839f detectors/ntech/models/classifiers.py (SeqExpandConv), not copied.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN = {"eps": 1e-3, "momentum": 0.01}  # 0.6.3: eps 1e-3, momentum 1 - 0.99
SE_RATIO = 0.25
DIVISOR = 8
# name -> (width coefficient, depth coefficient, nominal image size), 0.6.3 utils.efficientnet_params.
VARIANTS = {
    "efficientnet-b0": (1.0, 1.0, 224),
    "efficientnet-b1": (1.0, 1.1, 240),
    "efficientnet-b3": (1.2, 1.4, 300),
    "efficientnet-b7": (2.0, 3.1, 600),
}
# B0's stages before scaling: (repeats, kernel, stride, expand ratio, in, out).
BASE_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
               (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def round_filters(filters: int, width: float) -> int:
    """Channels after width scaling, rounded to a multiple of 8 and never more than 10 % below."""
    scaled = filters * width
    rounded = max(DIVISOR, int(scaled + DIVISOR / 2) // DIVISOR * DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += DIVISOR
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks per stage after depth scaling (rounded up)."""
    return int(math.ceil(depth * repeats))


def stage_table(variant: str) -> tuple[tuple[int, int, int, int, int, int], ...]:
    """The scaled stages of one variant.

    Args:
        variant: a key of VARIANTS, e.g. "efficientnet-b7".
    Returns:
        (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.

    >>> stage_table("efficientnet-b3")[0]
    (2, 3, 1, 1, 40, 24)
    """
    width, depth, _ = _params(variant)
    return tuple((round_repeats(r, depth), k, s, e, round_filters(cin, width), round_filters(cout, width))
                 for r, k, s, e, cin, cout in BASE_STAGES)


def _params(variant: str) -> tuple[float, float, int]:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; known: {', '.join(VARIANTS)}") from None


def static_same_padding(kernel: int, stride: int, image_size: int) -> tuple[int, int, int, int]:
    """F.pad order (left, right, top, bottom) of TF "same" padding for a square input of image_size."""
    out = -(-image_size // stride)
    total = max((out - 1) * stride + kernel - image_size, 0)
    return (total // 2, total - total // 2, total // 2, total - total // 2)


class StaticSameConv2d(nn.Conv2d):
    """A Conv2d whose "same" padding is fixed at build time for the nominal image size (no parameters added)."""

    def __init__(self, cin: int, cout: int, k: int, image_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = False):
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=bias)
        self.static_pad = static_same_padding(k, stride, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.static_pad):
            x = F.pad(x, self.static_pad)
        return super().forward(x)


class SeqExpandConv(nn.Module):
    """NTechLab's expand conv: a 3x1x1 Conv3d across `seq_length` consecutive frames of the batch.

    The batch is clips x seq_length frames, clip-major; each frame keeps its own output row, and
    the first and last frame of a clip see a zero neighbour (padding 1 in time).
    """

    def __init__(self, cin: int, cout: int, seq_length: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False)
        self.seq_length = seq_length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, channels, height, width = x.shape
        if frames % self.seq_length:
            raise ValueError(f"batch of {frames} frames is not a whole number of {self.seq_length}-frame clips")
        clips = x.view(frames // self.seq_length, self.seq_length, channels, height, width).transpose(1, 2)
        return self.conv(clips).transpose(1, 2).flatten(0, 1)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation (ratio 0.25 of the block input), 0.6.3 names."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, image_size: int,
                 seq_length: int | None = None):
        super().__init__()
        mid = cin * expand
        self.expand = expand
        self.skip = stride == 1 and cin == cout
        if expand != 1:
            self._expand_conv = (StaticSameConv2d(cin, mid, 1, image_size) if seq_length is None
                                 else SeqExpandConv(cin, mid, seq_length))
            self._bn0 = nn.BatchNorm2d(mid, **BN)
        self._depthwise_conv = StaticSameConv2d(mid, mid, k, image_size, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        squeeze = max(1, int(cin * SE_RATIO))
        self._se_reduce = StaticSameConv2d(mid, squeeze, 1, image_size, bias=True)
        self._se_expand = StaticSameConv2d(squeeze, mid, 1, image_size, bias=True)
        self._project_conv = StaticSameConv2d(mid, cout, 1, image_size)
        self._bn2 = nn.BatchNorm2d(cout, **BN)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand != 1:
            x = swish(self._bn0(self._expand_conv(x)))
        x = swish(self._bn1(self._depthwise_conv(x)))
        s = self._se_expand(swish(self._se_reduce(F.adaptive_avg_pool2d(x, 1))))
        x = torch.sigmoid(s) * x
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x  # drop-connect is inactive at inference


class EfficientNet063(nn.Module):
    """EfficientNet exactly as efficientnet_pytorch 0.6.3 `EfficientNet.from_name(variant)` builds it.

    Args:
        variant: "efficientnet-b0", "-b1", "-b3" or "-b7".
        num_classes: width of `_fc` (1000 for the ImageNet head, 1 for NTechLab, 2 for Eighteen).
        seq_length: None for the plain model; 7 for NTechLab's sequence model (Conv3d expand convs,
            batch = clips x 7 frames, one logit per frame).

    >>> EfficientNet063("efficientnet-b0", num_classes=2)(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 2])
    """

    def __init__(self, variant: str, num_classes: int = 1000, seq_length: int | None = None):
        super().__init__()
        width, _, image_size = _params(variant)
        self.variant, self.image_size = variant, image_size
        stages = stage_table(variant)
        stem = round_filters(32, width)
        self._conv_stem = StaticSameConv2d(3, stem, 3, image_size, stride=2)
        self._bn0 = nn.BatchNorm2d(stem, **BN)
        blocks = []
        for repeats, k, stride, expand, cin, cout in stages:
            blocks.append(MBConvBlock(cin, cout, k, stride, expand, image_size, seq_length))
            blocks += [MBConvBlock(cout, cout, k, 1, expand, image_size, seq_length) for _ in range(repeats - 1)]
        self._blocks = nn.ModuleList(blocks)
        head = round_filters(1280, width)
        self._conv_head = StaticSameConv2d(stages[-1][5], head, 1, image_size)
        self._bn1 = nn.BatchNorm2d(head, **BN)
        self._fc = nn.Linear(head, num_classes)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's activations (swish after `_bn1`), before pooling."""
        x = swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return swish(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes); dropout is inactive at inference."""
        return self._fc(F.adaptive_avg_pool2d(self.extract_features(x), 1).flatten(1))

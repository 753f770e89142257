"""The Medics (DFDC 5th, as FakeFinder packaged it): the eight networks, in layouts that load the authors' state dicts strictly.

Seven 3-D CNNs take a face clip (B, 3, T, H, W) and give 2 logits, where class 1 means REAL
(FakeFinder's `REVERSE_PROBS`): two I3D (piergiaj layout with TF "same" padding and an average
over time), a 3-D ResNet-34 with parameter-free shortcut A (kenshohara layout), mc3_18 (used at
112 and at 224 px) and two r2plus1d_18 (torchvision's video ResNets, same keys since 0.4). The
2-D member is an SE-ResNeXt50 (pretrainedmodels layout = timm `legacy_seresnext50_32x4d`) with
one logit per frame and a lower-median over the clip's frames.

Written from the research spec (IQTLabs/FakeFinder 780839f `detectors/medics`, jphdotam/DFDC
b08c317; FakeFinder Apache-2.0, DFDC MIT), not copied. tests/fixtures/medics-*.keys.tsv hold the upstream layouts.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.video import mc3_18, r2plus1d_18

from detectors.medics_faces import (NORM_OF_3D, FaceRegion, crop_3d, crops_2d, face_boxes_2d, model_input_2d,
                                    model_input_3d)

# FakeFinder's medics/cnn3d/builder.py order: (member, file stem, architecture = upstream's 'type').
# Member names are detectors.fakefinder_rules.MEDICS_3D's.
MEMBERS_3D = (
    ("i3d", "j3d_e1_l0.1374", "i3d"),
    ("res34", "res34_1cy_minaug_nonorm_e4_l0.1794", "res34"),
    ("mc3_112", "mc3_18_112_1cy_lilaug_nonorm_e9_l0.1905", "mc3_112"),
    ("mc3_224", "mc3_18_112t224_1cy_lilaug_nonorm_e7_l0.1901", "mc3_224"),
    ("r2p1_112", "r2p1_18_8_112tr_112te_e12_l0.1741", "r2p1_112"),
    ("i3d_cutmix", "i3dcutmix_e11_l0.1612", "i3d"),
    ("r2p1_cutmix", "r2plus1dcutmix_112_e10_l0.1608", "r2p1_112"),
)
MEMBER_2D = ("srxt50", "SRXT50_094_VM-0.2504")  # the file ends .PTH


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF-"same" padding of one dimension as upstream's I3D computes it: (before, after), the odd pixel after.

    Args:
        size: the input's length along the dimension.
        kernel, stride: the layer's kernel size and stride along it.
    Returns:
        (before, after) zero padding.
    """
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    (t0, t1), (h0, h1), (w0, w1) = (same_pad(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride))
    return F.pad(x, (w0, w1, h0, h1, t0, t1))


class Unit3D(nn.Module):
    """I3D's conv unit: same-padding, Conv3d (`conv3d`), optional BatchNorm (`bn`, eps 1e-3) and ReLU."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), *,
                 bn: bool = True, relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max-pool after zero "same" padding (zeros, not -inf: upstream pads with F.pad's default)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """One Mixed_* block; `widths` = [b0, b1a, b1b, b2a, b2b, b3b] output channels."""

    def __init__(self, cin: int, widths: list[int]):
        super().__init__()
        self.b0 = Unit3D(cin, widths[0])
        self.b1a = Unit3D(cin, widths[1])
        self.b1b = Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a = Unit3D(cin, widths[3])
        self.b2b = Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, widths[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (endpoint, kind, arguments) in forward order.
_I3D_ENDPOINTS = (
    ("Conv3d_1a_7x7", "unit", (3, 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, 64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (64, 192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (192, [64, 96, 128, 16, 32, 32])),
    ("Mixed_3c", "mixed", (256, [128, 128, 192, 32, 96, 64])),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (480, [192, 96, 208, 16, 48, 64])),
    ("Mixed_4c", "mixed", (512, [160, 112, 224, 24, 64, 64])),
    ("Mixed_4d", "mixed", (512, [128, 128, 256, 24, 64, 64])),
    ("Mixed_4e", "mixed", (512, [112, 144, 288, 32, 64, 64])),
    ("Mixed_4f", "mixed", (528, [256, 160, 320, 32, 128, 128])),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (832, [256, 160, 320, 32, 128, 128])),
    ("Mixed_5c", "mixed", (832, [384, 192, 384, 48, 128, 128])),
)


class InceptionI3d(nn.Module):
    """I3D as the Medics ran it: InceptionI3d(157, output_method='avg_pool') with replace_logits(2).

    Input (B, 3, T, 224, 224), T >= 9 (values in [-1, 1]); output (B, 2) logits, the mean over the
    remaining time steps. `logits` is registered first because upstream assigns it in __init__
    before it adds the endpoints, so the state dict starts with `logits.conv3d.*`.
    """

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)
        for name, kind, args in _I3D_ENDPOINTS:
            if kind == "unit":
                module = Unit3D(*args)
            elif kind == "pool":
                module = MaxPool3dSame(*args)
            else:
                module = InceptionBlock(*args)
            self.add_module(name, module)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name, _, _ in _I3D_ENDPOINTS:
            x = self._modules[name](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.logits(self.dropout(self.avg_pool(self.features(x))))  # (B, 2, T', 1, 1)
        return x.squeeze(4).squeeze(3).mean(dim=2)


class BasicBlock3d(nn.Module):
    """kenshohara's 3-D BasicBlock; with shortcut A the residual is subsampled and zero-padded in channels."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.stride, self.shortcut_a = stride, stride != 1 or cin != planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x
        if self.shortcut_a:
            residual = x[:, :, ::self.stride, ::self.stride, ::self.stride]  # = avg_pool3d with kernel 1
            extra = out.shape[1] - residual.shape[1]
            residual = torch.cat([residual, residual.new_zeros((residual.shape[0], extra, *residual.shape[2:]))], 1)
        return F.relu(out + residual)


class ResNet3D34A(nn.Module):
    """resnet34(num_classes=2, shortcut_type='A', sample_size=224, sample_duration=32): no `downsample` keys.

    Input raw 0-255 RGB floats (the authors did not normalise), (B, 3, T, H, W); output (B, 2).
    """

    def __init__(self, num_classes: int = 2, layers=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, 7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)  # strides time too
        cin = 64
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
            stride = 1 if i == 1 else 2
            blocks = [BasicBlock3d(cin, planes, stride)] + [BasicBlock3d(planes, planes) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = planes
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


class SingleHead2d(nn.Module):
    """The 2-D member: SE-ResNeXt50 backbone (pretrainedmodels layout, its classifier removed) + `fc` to one logit.

    Keys `backbone.*` and `fc.*` as in upstream's SingleHead. In eval mode a video (B, 3, N, H, W)
    gives (B,) = the torch.median (the LOWER middle value for even N) of the N per-frame sigmoids.
    """

    def __init__(self):
        super().__init__()
        self.backbone = timm.create_model("legacy_seresnext50_32x4d", pretrained=False, num_classes=0)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(2048, 1)

    def forward_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B,) logits."""
        return self.fc(self.dropout(self.backbone(x)))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.sigmoid(self.forward_image(x[:, :, i])) for i in range(x.shape[2])], dim=1)
        return torch.median(probs, dim=1).values


def build_member_3d(kind: str) -> nn.Module:
    """A random-init 3-D member of one architecture kind ("i3d", "res34", "mc3_112", "mc3_224", "r2p1_112"), in eval mode."""
    if kind == "i3d":
        model = InceptionI3d()
    elif kind == "res34":
        model = ResNet3D34A()
    elif kind in ("mc3_112", "mc3_224"):
        model = mc3_18(weights=None, num_classes=2)
    elif kind == "r2p1_112":
        model = r2plus1d_18(weights=None, num_classes=2)
    else:
        raise ValueError(f"unknown Medics 3-D architecture {kind!r}")
    return model.eval()


def build_member_2d() -> nn.Module:
    """The random-init 2-D member, in eval mode."""
    return SingleHead2d().eval()


@torch.no_grad()
def fake_probability_3d(model: nn.Module, clip: torch.Tensor) -> float:
    """Upstream's HFlipWrapper + REVERSE_PROBS: 1 - mean softmax[1] over the clip and its mirror.

    Args:
        model: a 3-D member in eval mode.
        clip: one normalised clip (3, T, H, W).
    Returns:
        The fake probability (class 1 of these models is "real").
    """
    if clip.dim() != 4 or clip.shape[0] != 3:
        raise ValueError(f"expected one clip (3, T, H, W), got {tuple(clip.shape)}")
    # Two single passes, not one batch of two: same numbers in eval mode, half the peak memory.
    probs = [torch.softmax(model(c.unsqueeze(0)), dim=1)[0] for c in (clip, torch.flip(clip, (-1,)))]
    return float(1.0 - (probs[0][1] + probs[1][1]) / 2)


def face_score_3d(model: nn.Module, kind: str, video, region: FaceRegion) -> float:
    """One 3-D member's fake probability for one face (upstream inference_3d's loop body).

    Args:
        model: the member, eval mode.
        kind: its architecture ("i3d", "res34", "mc3_112", "mc3_224", "r2p1_112"), which picks the normalisation.
        video: (frames, H, W, 3) uint8 RGB from frame 0, at least region.frame_to frames.
        region: the face.
    """
    return fake_probability_3d(model, model_input_3d(crop_3d(video, region), NORM_OF_3D[kind]))


@torch.no_grad()
def face_score_2d(model: nn.Module, video, region: FaceRegion, scale: float) -> float:
    """The 2-D member's value for one face: the lower median of its per-frame fake probabilities (upstream inference_2d's loop body).

    Args:
        model: SingleHead2d in eval mode.
        video, region: as face_score_3d.
        scale: the detection scale the region was found at.
    """
    boxes = face_boxes_2d(region, scale)
    return float(model(model_input_2d(crops_2d(video, region, boxes)))[0])

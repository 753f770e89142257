"""RetinaFace (ResNet-50 or MobileNet-0.25 body) in the layout of biubug6/Pytorch_Retinaface (MIT): WM's and Eighteen's.

Written from the research spec (biubug6/Pytorch_Retinaface @ b984b4b, as pinned by cuihaoleo/kaggle-dfdc
and IQTLabs/FakeFinder), not copied. Used the way the WM team used it: the full-resolution BGR frame
minus (104, 117, 123), no resize; detections with score > 0.8, **no NMS**, the largest box wins and its
five landmarks (left eye, right eye, nose, left and right mouth corner, image left/right) are returned.

State-dict keys match the upstream file `RetinaFace-Resnet50-fixed.pth` (a bare state dict, no
`module.` prefix): `body.*` (torchvision ResNet-50 up to layer4), `fpn.*`, `ssh1..3.*`,
`ClassHead.i.*`, `BboxHead.i.*`, `LandmarkHead.i.*`.

`RetinaFace(body="mobilenet0.25")` is the variant Eighteen Years Old used (`mobilenet0.25_Final.pth`,
300 keys, tests/fixtures/eighteen-retinaface-mnet.keys.tsv): upstream's MobileNetV1 x0.25 body
(`stage1..3`, its ImageNet `avg`/`fc` dropped), in channel 32 / out channel 64, so every FPN/SSH
activation is LeakyReLU(0.1). Eighteen's detection settings live in detectors/eighteen_faces.py.
"""
from __future__ import annotations

from itertools import product
from math import ceil

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)
CONFIDENCE = 0.8
ANCHORS = 2
# body -> (in channel, out channel) of upstream's cfg_re50 / cfg_mnet; the FPN takes 2x, 4x, 8x in
CHANNELS = {"resnet50": (256, 256), "mobilenet0.25": (32, 64)}


def _conv_bn(cin: int, cout: int, k: int, relu: bool, leaky: float = 0.0) -> nn.Sequential:
    """Conv (no bias) + BN [+ LeakyReLU]; index 0 conv, 1 BN as in the upstream keys."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        self.conv3X3 = _conv_bn(cin, cout // 2, 3, relu=False)
        self.conv5X5_1 = _conv_bn(cin, cout // 4, 3, relu=True, leaky=leaky)
        self.conv5X5_2 = _conv_bn(cout // 4, cout // 4, 3, relu=False)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4, 3, relu=True, leaky=leaky)
        self.conv7x7_3 = _conv_bn(cout // 4, cout // 4, 3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv3X3(x)
        b1 = self.conv5X5_1(x)
        b = self.conv5X5_2(b1)
        c = self.conv7x7_3(self.conv7X7_2(b1))
        return F.relu(torch.cat([a, b, c], dim=1))


class FPN(nn.Module):
    """Lateral 1x1 convs, nearest top-down upsampling and add, 3x3 merge convs."""

    def __init__(self, in_list: tuple[int, int, int], cout: int):
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        self.output1 = _conv_bn(in_list[0], cout, 1, relu=True, leaky=leaky)
        self.output2 = _conv_bn(in_list[1], cout, 1, relu=True, leaky=leaky)
        self.output3 = _conv_bn(in_list[2], cout, 1, relu=True, leaky=leaky)
        self.merge1 = _conv_bn(cout, cout, 3, relu=True, leaky=leaky)
        self.merge2 = _conv_bn(cout, cout, 3, relu=True, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class _Head(nn.Module):
    def __init__(self, cin: int, per_anchor: int):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, ANCHORS * per_anchor, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.per_anchor)


def _mnet_conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    """MobileNet stem: 3x3 conv (no bias) + BN + LeakyReLU(0.1)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(negative_slope=0.1, inplace=True))


def _mnet_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 + BN + LeakyReLU(0.1), then pointwise 1x1 + BN + LeakyReLU(0.1) (weights at 0, 1, 3, 4)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
        nn.LeakyReLU(negative_slope=0.1, inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        nn.LeakyReLU(negative_slope=0.1, inplace=True))


class MobileNetV1Body(nn.Module):
    """MobileNetV1 x0.25 up to stage3; forward returns the stage1/2/3 maps (strides 8, 16, 32; 64, 128, 256 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(_mnet_conv(3, 8, 2), _mnet_dw(8, 16, 1), _mnet_dw(16, 32, 2),
                                    _mnet_dw(32, 32, 1), _mnet_dw(32, 64, 2), _mnet_dw(64, 64, 1))
        self.stage2 = nn.Sequential(_mnet_dw(64, 128, 2), *(_mnet_dw(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(_mnet_dw(128, 256, 2), _mnet_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        return {1: s1, 2: s2, 3: self.stage3(s2)}


class RetinaFace(nn.Module):
    """RetinaFace in test phase: forward -> (loc (B,P,4), softmax conf (B,P,2), landmarks (B,P,10)).

    Args:
        body: "resnet50" (WM, the default) or "mobilenet0.25" (Eighteen).
    """

    def __init__(self, body: str = "resnet50") -> None:
        super().__init__()
        if body not in CHANNELS:
            raise ValueError(f"unknown RetinaFace body {body!r}; known: {sorted(CHANNELS)}")
        self.body_name = body
        cin, cout = CHANNELS[body]
        if body == "resnet50":
            self.body = IntermediateLayerGetter(resnet50(weights=None), {"layer2": 1, "layer3": 2, "layer4": 3})
        else:
            self.body = MobileNetV1Body()
        self.fpn = FPN((cin * 2, cin * 4, cin * 8), cout)
        self.ssh1 = SSH(cout, cout)
        self.ssh2 = SSH(cout, cout)
        self.ssh3 = SSH(cout, cout)
        self.ClassHead = nn.ModuleList(_Head(cout, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(cout, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(cout, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(list(self.body(x).values()))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        landms = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, F.softmax(conf, dim=-1), landms


def prior_boxes(height: int, width: int) -> torch.Tensor:
    """Anchors (P, 4) as (cx, cy, w, h) relative to the image: level -> row -> column -> min size."""
    anchors: list[float] = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        for i, j in product(range(ceil(height / step)), range(ceil(width / step))):
            cx, cy = (j + 0.5) * step / width, (i + 0.5) * step / height
            for s in sizes:
                anchors += [cx, cy, s / width, s / height]
    return torch.tensor(anchors, dtype=torch.float32).view(-1, 4)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """SSD decode with variances (0.1, 0.2) -> (x1, y1, x2, y2) relative to the image."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])
    top_left = centre - size / 2
    # upstream (biubug6 `decode`/`decode_batch`) forms x2, y2 as (centre - size/2) + size, not centre + size/2:
    # the two differ in the last float32 bit, which moves a truncated pixel box edge now and then
    return torch.cat([top_left, top_left + size], dim=1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Five points (P, 10) relative to the image: prior centre + offset * 0.1 * prior size."""
    return torch.cat([priors[:, :2] + pre[:, 2 * k : 2 * k + 2] * VARIANCE[0] * priors[:, 2:] for k in range(5)], dim=1)


class RetinaFaceDetector:
    """Upstream WM face choice on one frame: the largest raw detection with score > 0.8."""

    def __init__(self, model: RetinaFace, device: torch.device | str = "cpu"):
        self.model = model.eval()
        self.device = torch.device(device)
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    @torch.inference_mode()
    def detect_confident(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every raw detection with score > 0.8 (no NMS, as upstream), in prior order.

        Returns:
            (boxes (K, 4) x1,y1,x2,y2, scores (K,), landmarks (K, 5, 2)) in pixels, float64.
        """
        h, w = frame_rgb.shape[:2]
        bgr = np.ascontiguousarray(frame_rgb[:, :, ::-1], dtype=np.float32) - np.array(BGR_MEAN, np.float32)
        x = torch.from_numpy(bgr.transpose(2, 0, 1).copy())[None].to(self.device)
        loc, conf, landms = self.model(x)
        if (h, w) not in self._priors:
            self._priors[(h, w)] = prior_boxes(h, w)
        priors = self._priors[(h, w)]
        loc, conf, landms = loc[0].float().cpu(), conf[0].float().cpu(), landms[0].float().cpu()
        boxes = decode_boxes(loc, priors) * torch.tensor([w, h, w, h], dtype=torch.float32)
        marks = decode_landmarks(landms, priors) * torch.tensor([w, h] * 5, dtype=torch.float32)
        keep = conf[:, 1] > CONFIDENCE
        return (boxes[keep].numpy().astype(np.float64), conf[keep, 1].numpy().astype(np.float64),
                marks[keep].numpy().reshape(-1, 5, 2).astype(np.float64))

    def detect_scored_largest(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(box (4,), landmarks (5, 2), score) of the largest box with score > 0.8; None when there is none."""
        boxes, scores, marks = self.detect_confident(frame_rgb)
        if not len(boxes):
            return None
        b32 = boxes.astype(np.float32)  # areas in float32, as upstream compares them
        areas = (b32[:, 3] - b32[:, 1]) * (b32[:, 2] - b32[:, 0])
        best = int(np.argmax(areas))  # first maximum, as numpy/upstream
        return boxes[best], marks[best], float(scores[best])

    def detect_largest(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(box (4,) x1,y1,x2,y2, landmarks (5, 2)) in pixels, float; None when no score > 0.8."""
        found = self.detect_scored_largest(frame_rgb)
        return None if found is None else (found[0], found[1])


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream RetinaFace keys -> ours (identical; a `module.` prefix, as in Resnet50_Final.pth, is stripped)."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}

"""NTechLab's face detector: DSFD with a ResNet-152 body, in the layout of `WIDERFace_DSFD_RES152.fp16.pth`, and its priors.

Written from the research spec (docs/fakefinder-part2.md §1.2 (a)), which reads IQTLabs/FakeFinder @ 780839f
`detectors/ntech/models/dsfacedetector/` (vendored vlad3996/FaceDetection-DSFD, Tencent's DSFD); not copied.
State-dict keys and shapes equal FakeFinder's `SSD('test')` (tests/fixtures/ntech-dsfd-res152.keys.tsv, a bare
dict, no prefix): `layer1..4` (torchvision ResNet-152 re-wrapped), `layer5/6` (extra stride-2 stages),
`latlayer1..3`/`smooth1..3` (multiplicative FPN), `cpm3_3 … cpm7_2` (one FEM per level), `loc.k`/`conf.k`
(deep heads). The input is the padded BGR batch minus (104, 117, 123), std 1; the resize to 512 px and the
0.3 score threshold belong to the NTechLab pipeline (detectors/ntech_faces.py), not here. `detect` is the
network's test-time tail (upstream's `Detect` in layers/detection.py): SSD decode, scores > 0.01, greedy
NMS at IoU 0.3 over the top 5000, rows (score, x1, y1, x2, y2) in [0, 1] units of the padded input.
"""
from __future__ import annotations

from math import sqrt
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet152

BGR_MEAN = (104.0, 117.0, 123.0)
VARIANCE = (0.1, 0.2)
STEPS = (4, 8, 16, 32, 64, 128)
MIN_SIZES = (16, 32, 64, 128, 256, 512)
ASPECT_RATIO = 1.5  # cfg widerface_640: one prior per cell, max_sizes empty
# channels of the six sources before their FEMs (lfpn1, lfpn2, lfpn3, fc7, layer5, layer6)
SOURCE_CHANNELS = (256, 512, 1024, 2048, 512, 256)
# head outputs per level; only the first 4 loc and (after max-in-out) the first 2 conf channels are read
LOC_CHANNELS = (4, 8, 12, 12, 12, 12)
CONF_CHANNELS = (4, 6, 8, 8, 8, 8)
FEM_NAMES = ("cpm3_3", "cpm4_3", "cpm5_3", "cpm7", "cpm6_2", "cpm7_2")
# cfg widerface_640 test settings, as SSD('test') hands them to Detect
CONF_THRESHOLD = 0.01  # face scores strictly above enter the NMS
NMS_THRESHOLD = 0.3  # a box is suppressed when its IoU with a kept one is above this
TOP_K = 5000  # num_thresh: at most this many candidates (the highest scores) per image


class DSFDOutput(NamedTuple):
    """Raw head output of one batch, priors in level order, row-major cells."""
    loc: torch.Tensor  # (N, P, 4) SSD offsets (dx, dy, dw, dh), still to be decoded with the priors
    scores: torch.Tensor  # (N, P, 2) softmax over (background, face)
    feature_sizes: tuple[tuple[int, int], ...]  # (h, w) of the six levels, what `prior_boxes` needs


def _conv(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Conv2d:
    """Stride-1 conv with bias and 'same' padding for odd k (every FEM/head conv upstream has a bias)."""
    return nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation)


class FEM(nn.Module):
    """Feature enhance module: three branches (plain, dilated, dilated twice) concatenated to 512 channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.cpm1 = _conv(channels, 256, 3)
        self.cpm2 = _conv(channels, 256, 3, dilation=2)
        self.cpm3 = _conv(256, 128, 3)
        self.cpm4 = _conv(256, 128, 3, dilation=2)
        self.cpm5 = _conv(128, 128, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = F.relu(self.cpm2(x))
        deep = F.relu(self.cpm4(wide))
        return torch.cat((F.relu(self.cpm1(x)), F.relu(self.cpm3(wide)), F.relu(self.cpm5(deep))), 1)


class DeepHead(nn.Module):
    """Three 3x3 convs (ReLU between) and a 1x1 to `out` channels: upstream's DeepHeadModule(512, out)."""

    def __init__(self, out: int, channels: int = 512):
        super().__init__()
        mid = min(channels, 256)
        self.conv1 = _conv(channels, mid, 3)
        self.conv2 = _conv(mid, mid, 3)
        self.conv3 = _conv(mid, mid, 3)
        self.conv4 = _conv(mid, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv4(F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))))


def _extra_stage(cin: int, mid: int, cout: int) -> nn.Sequential:
    """1x1 conv, BN, ReLU, 3x3 stride-2 conv, BN, ReLU (indices 0, 1, 3, 4 hold the weights, as upstream)."""
    return nn.Sequential(nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def upsample_product(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """DSFD's FPN merge: `top` resized bilinearly to the lateral's exact size, times the lateral (not a sum)."""
    return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False) * lateral


def max_in_out(conf: torch.Tensor, level: int) -> torch.Tensor:
    """Max-in-out on a conf head: the max of channels 0-2 is the background score on level 0 and the face
    score elsewhere (channel 3 takes the other place); channels 4+ follow unchanged."""
    merged = conf[:, :3].amax(dim=1, keepdim=True)
    other = conf[:, 3:4]
    pair = (merged, other) if level == 0 else (other, merged)
    return torch.cat((*pair, conf[:, 4:]), 1)


class DSFD(nn.Module):
    """DSFD ResNet-152 as FakeFinder's `SSD('test')`: forward gives `DSFDOutput` (no decode, no NMS)."""

    def __init__(self):
        super().__init__()
        body = resnet152(weights=None)
        self.layer1 = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool, body.layer1)
        self.layer2 = nn.Sequential(body.layer2)
        self.layer3 = nn.Sequential(body.layer3)
        self.layer4 = nn.Sequential(body.layer4)
        self.layer5 = _extra_stage(2048, 512, 512)
        self.layer6 = _extra_stage(512, 128, 256)
        c = SOURCE_CHANNELS
        self.latlayer3 = nn.Conv2d(c[3], c[2], 1)
        self.latlayer2 = nn.Conv2d(c[2], c[1], 1)
        self.latlayer1 = nn.Conv2d(c[1], c[0], 1)
        self.smooth3 = nn.Conv2d(c[2], c[2], 1)
        self.smooth2 = nn.Conv2d(c[1], c[1], 1)
        self.smooth1 = nn.Conv2d(c[0], c[0], 1)
        for name, channels in zip(FEM_NAMES, SOURCE_CHANNELS):
            self.add_module(name, FEM(channels))
        self.loc = nn.ModuleList(DeepHead(n) for n in LOC_CHANNELS)
        self.conf = nn.ModuleList(DeepHead(n) for n in CONF_CHANNELS)

    def forward(self, x: torch.Tensor) -> DSFDOutput:
        c3 = self.layer1(x)
        c4 = self.layer2(c3)
        c5 = self.layer3(c4)
        fc7 = self.layer4(c5)
        c6 = self.layer5(fc7)
        c7 = self.layer6(c6)
        p5 = upsample_product(self.latlayer3(fc7), self.smooth3(c5))
        p4 = upsample_product(self.latlayer2(p5), self.smooth2(c4))
        p3 = upsample_product(self.latlayer1(p4), self.smooth1(c3))
        sources = [getattr(self, name)(s) for name, s in zip(FEM_NAMES, (p3, p4, p5, fc7, c6, c7))]
        n = x.shape[0]
        locs, confs = [], []
        for level, (s, loc_head, conf_head) in enumerate(zip(sources, self.loc, self.conf)):
            locs.append(loc_head(s)[:, :4].permute(0, 2, 3, 1).reshape(n, -1, 4))
            confs.append(max_in_out(conf_head(s), level)[:, :2].permute(0, 2, 3, 1).reshape(n, -1, 2))
        return DSFDOutput(torch.cat(locs, 1), torch.cat(confs, 1).softmax(-1),
                          tuple((s.shape[2], s.shape[3]) for s in sources))


def prior_boxes(feature_sizes, image_size) -> torch.Tensor:
    """DSFD's priors (cfg widerface_640) for one padded input, as FakeFinder's `get_prior_boxes` lays them out.

    Args:
        feature_sizes: the six (h, w) of `DSFDOutput.feature_sizes`.
        image_size: (H, W) of the tensor the network saw (after padding).
    Returns:
        float32 (P, 4) rows (cx, cy, w, h) in [0, 1] units of W and H, levels in order, cells row-major,
        one prior per cell: centre ((j + 0.5)·step/W, (i + 0.5)·step/H), size (min/W/√1.5, min/H·√1.5),
        clamped to [0, 1].
    """
    if len(feature_sizes) != len(STEPS):
        raise ValueError(f"DSFD has {len(STEPS)} levels, got {len(feature_sizes)} feature sizes")
    height, width = image_size
    rows = []
    for (fh, fw), step, size in zip(feature_sizes, STEPS, MIN_SIZES):
        # upstream divides by (H / step) in Python floats, then stores float32: do the same order of operations
        cy = (torch.arange(fh, dtype=torch.float64) + 0.5) / (height / step)
        cx = (torch.arange(fw, dtype=torch.float64) + 0.5) / (width / step)
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        w = torch.full_like(grid_x, size / width / sqrt(ASPECT_RATIO))
        h = torch.full_like(grid_x, size / height * sqrt(ASPECT_RATIO))
        rows.append(torch.stack((grid_x, grid_y, w, h), -1).reshape(-1, 4))
    return torch.cat(rows).to(torch.float32).clamp_(0.0, 1.0)


def decode(loc: torch.Tensor, priors: torch.Tensor, variance=VARIANCE) -> torch.Tensor:
    """SSD offsets to corner boxes, in upstream's order of float32 operations.

    Args:
        loc: (P, 4) offsets (dx, dy, dw, dh).
        priors: (P, 4) (cx, cy, w, h).
    Returns:
        (P, 4) (x1, y1, x2, y2): centre = prior centre + dx·0.1·prior size, size = prior size·exp(dw·0.2),
        then corners; same units as the priors.
    """
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * variance[0] * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * variance[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def nms(boxes: torch.Tensor, scores: torch.Tensor, overlap: float = NMS_THRESHOLD, top_k: int = TOP_K) -> list[int]:
    """Greedy non-maximum suppression as upstream's `nms` (the ssd.pytorch one).

    The `top_k` highest scores are candidates; repeatedly the highest left is kept and every candidate
    whose IoU with it is above `overlap` is dropped (IoU without +1, an empty union counts as suppressed,
    as a NaN IoU fails upstream's `<=` test). Scores are ordered by a stable ascending sort and taken
    from the end, so among equal scores the later box comes first; upstream's order among exactly equal
    scores came from torch 1.4's (GPU) sort and is not reproduced. Checked against FakeFinder's own
    `Detect` on tie-free inputs (tests/fixtures/ntech-dsfd-detect.tsv).

    Returns:
        indices into `boxes` of the kept boxes, best first.
    """
    if boxes.numel() == 0:
        return []
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, stable=True).indices[-top_k:]
    keep = []
    while order.numel() > 0:
        i = order[-1]
        keep.append(int(i))
        order = order[:-1]
        if order.numel() == 0:
            break
        w = (torch.minimum(x2[order], x2[i]) - torch.maximum(x1[order], x1[i])).clamp(min=0.0)
        h = (torch.minimum(y2[order], y2[i]) - torch.maximum(y1[order], y1[i])).clamp(min=0.0)
        inter = w * h
        iou = inter / ((area[order] - inter) + area[i])
        order = order[iou <= overlap]
    return keep


def detect(output: DSFDOutput, image_size) -> list[torch.Tensor]:
    """Upstream's `Detect` on one batch: per image, the face rows kept by NMS.

    Args:
        output: the network's `DSFDOutput`.
        image_size: (H, W) of the padded batch tensor (the priors are normalised to it).
    Returns:
        per image a float32 (n, 5) tensor of rows (score, x1, y1, x2, y2), scores descending, boxes
        in [0, 1] units of the padded tensor (not clipped); n = 0 when no face score is above 0.01.
    """
    priors = prior_boxes(output.feature_sizes, image_size).to(output.loc.device)
    if priors.shape[0] != output.loc.shape[1]:
        raise ValueError(f"{output.loc.shape[1]} predictions but {priors.shape[0]} priors")
    rows = []
    for loc, scores in zip(output.loc, output.scores):
        boxes = decode(loc.float(), priors)
        face = scores[:, 1].float()
        mask = face > CONF_THRESHOLD
        kept_boxes, kept_scores = boxes[mask], face[mask]
        keep = torch.tensor(nms(kept_boxes, kept_scores), dtype=torch.long)
        rows.append(torch.cat((kept_scores[keep, None], kept_boxes[keep]), 1) if keep.numel()
                    else torch.zeros((0, 5), dtype=torch.float32))
    return rows

"""Eighteen Years Old (DFDC 4th): the eleven members as data (file, model, input, normalisation, TTA, weight) and their inputs.

From the authors' inference script as FakeFinder deployed it (IQTLabs/FakeFinder 780839f
`detectors/eighteen/ensemble.py` `predict_batch`, `get_image_score`, `get_sf_score`; spec §2.1, §2.3 table,
§2.4), written from the spec, not copied. Member names, group weights and which members are "scaled" are
the video rule's (detectors/fakefinder_rules.py `EIGHTEEN_*`), read from there so the rule is stated once.
The models themselves are built elsewhere: SlowFast in detectors/eighteen_models.py, Xception as WM's
(timm `legacy_xception`, 2 classes), ResNet-34 as torchvision's `resnet34(num_classes=2)`, the EfficientNets
by detectors/effnet063.py `EfficientNet063(variant, num_classes=2)` (static padding for the nominal size,
run on 299-pixel crops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from detectors.base import IMAGENET_MEAN, IMAGENET_STD
from detectors.fakefinder_rules import EIGHTEEN_IMAGE, EIGHTEEN_SCALED, EIGHTEEN_SLOWFAST, EIGHTEEN_SLOWFAST_SHARE

SLOWFAST_MEAN = (110.63666788 / 255, 103.16065604 / 255, 96.29023126 / 255)
SLOWFAST_STD = (38.7568578 / 255, 37.88248729 / 255, 40.02898126 / 255)
HALF = (0.5, 0.5, 0.5)
GROUP_SHARE = {"slowfast": EIGHTEEN_SLOWFAST_SHARE, "image": 1 - EIGHTEEN_SLOWFAST_SHARE}
IMAGE_FRAMES = 35  # image members look at about this many of the sampled frames
GROUP_FRAMES = 5  # … in consecutive groups of 5 whose logits are averaged


@dataclass(frozen=True)
class Member:
    """One member as the authors ran it."""

    name: str  # as the video rule names it (fakefinder_rules.EIGHTEEN_MEMBERS)
    file: str  # checkpoint stem inside eighteen.tar.gz (".pth.tar")
    arch: str  # "slowfast50", "xception", "resnet34", "efficientnet-b0|b1|b3"
    size: int  # crop side: 256 or 299
    rgb: bool  # False: the crops stay BGR (Xception)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool  # horizontal-flip TTA, logits averaged
    nominal: int | None = None  # EfficientNet: the size its static padding was computed for

    @property
    def group(self) -> str:
        """"slowfast" (one clip per face) or "image" (frames in groups of 5)."""
        return "slowfast" if self.name in EIGHTEEN_SLOWFAST else "image"

    @property
    def weight(self) -> int:
        """Its weight within its group, before normalising (the rule's)."""
        return {**EIGHTEEN_SLOWFAST, **EIGHTEEN_IMAGE}[self.name]

    @property
    def scale(self) -> bool:
        """Whether its video score goes through the pull towards 0.5 (scores >= 0.98 or <= 0.02)."""
        return self.name in EIGHTEEN_SCALED


# In the order of upstream's score list: SF1..SF4, XCP, B3, RES34, B1, B1long, B1short, B0.
MEMBERS: tuple[Member, ...] = (
    Member("SF1", "sf_bc_jc_44000", "slowfast50", 256, True, SLOWFAST_MEAN, SLOWFAST_STD, False),
    Member("SF2", "sf_32000", "slowfast50", 256, True, SLOWFAST_MEAN, SLOWFAST_STD, False),
    Member("SF3", "sf_16x8_bc_jc_44000", "slowfast50", 256, True, SLOWFAST_MEAN, SLOWFAST_STD, False),
    Member("SF4", "sf_trainval_52000", "slowfast50", 256, True, SLOWFAST_MEAN, SLOWFAST_STD, False),
    Member("XCP", "xcep_bgr_58000", "xception", 299, False, HALF, HALF, True),
    Member("B3", "b3_rgb_50000", "efficientnet-b3", 299, True, IMAGENET_MEAN, IMAGENET_STD, False, nominal=300),
    Member("RES34", "res34_rgb_23000", "resnet34", 256, True, IMAGENET_MEAN, IMAGENET_STD, True),
    Member("B1", "b1_rgb_58000", "efficientnet-b1", 299, True, IMAGENET_MEAN, IMAGENET_STD, True, nominal=240),
    Member("B1long", "b1_rgb_long_alldata_66000", "efficientnet-b1", 299, True, IMAGENET_MEAN, IMAGENET_STD, False,
           nominal=240),
    Member("B1short", "b1_rgb_alldata_58000", "efficientnet-b1", 299, True, IMAGENET_MEAN, IMAGENET_STD, False,
           nominal=240),
    Member("B0", "b0_rgb_58000", "efficientnet-b0", 299, True, IMAGENET_MEAN, IMAGENET_STD, True, nominal=224),
)
BY_NAME = {m.name: m for m in MEMBERS}


def member(name: str) -> Member:
    """The member called `name`; an unknown name raises KeyError listing the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown Eighteen member {name!r}; known: {', '.join(BY_NAME)}") from None


def final_weights() -> dict[str, float]:
    """Each member's share of the final score when all run: weight / group total x (0.4 SlowFast | 0.6 image)."""
    totals = {g: sum(m.weight for m in MEMBERS if m.group == g) for g in GROUP_SHARE}
    return {m.name: m.weight / totals[m.group] * GROUP_SHARE[m.group] for m in MEMBERS}


def image_frame_indices(num_frames: int) -> list[int]:
    """Which crops of a tube the image members see: every ceil(F / 35)-th, cut to a multiple of 5."""
    step = max(1, math.ceil(num_frames / IMAGE_FRAMES))
    picked = list(range(0, num_frames, step))
    return picked[: len(picked) // GROUP_FRAMES * GROUP_FRAMES]


def _normalise(x: torch.Tensor, m: Member, channel_dim: int) -> torch.Tensor:
    shape = [1] * x.ndim
    shape[channel_dim] = 3
    mean = torch.tensor(m.mean, dtype=torch.float32).view(shape)
    std = torch.tensor(m.std, dtype=torch.float32).view(shape)
    return (x - mean) / std


def image_input(crops_bgr: torch.Tensor, m: Member) -> torch.Tensor:
    """One face's crops (F, H, W, 3) BGR uint8 or 0..255 float -> (F, 3, H, W) as member m takes them.

    Upstream order: /255, BGR -> RGB unless the member is BGR, (x - mean) / std.
    """
    if m.group != "image":
        raise ValueError(f"{m.name} is a {m.group} member; use clip_input")
    if crops_bgr.ndim != 4 or crops_bgr.shape[-1] != 3 or crops_bgr.shape[1:3] != (m.size, m.size):
        raise ValueError(f"{m.name} takes (F, {m.size}, {m.size}, 3) crops, got {tuple(crops_bgr.shape)}")
    x = crops_bgr.to(torch.float32).permute(0, 3, 1, 2) / 255
    if m.rgb:
        x = x[:, [2, 1, 0]]
    return _normalise(x, m, 1)


def clip_input(crops_bgr: torch.Tensor, m: Member) -> torch.Tensor:
    """Faces' crops (faces, F, 256, 256, 3) BGR -> (faces, 3, F, 256, 256) RGB, SlowFast's mean/std: one clip per face."""
    if m.group != "slowfast":
        raise ValueError(f"{m.name} is an {m.group} member; use image_input")
    if crops_bgr.ndim != 5 or crops_bgr.shape[-1] != 3 or crops_bgr.shape[2:4] != (m.size, m.size):
        raise ValueError(f"{m.name} takes (faces, F, {m.size}, {m.size}, 3) crops, got {tuple(crops_bgr.shape)}")
    x = crops_bgr.to(torch.float32).permute(0, 4, 1, 2, 3) / 255
    x = x[:, [2, 1, 0]]
    return _normalise(x, m, 1)


def checkpoint_prefix(m: Member) -> str:
    """The prefix every key of m's checkpoint carries: DistributedDataParallel's `module.`, plus the
    `TransferModel.model` wrapper for Xception."""
    return "module.model." if m.arch == "xception" else "module."


def strip_checkpoint_prefix(state: dict[str, torch.Tensor], m: Member) -> dict[str, torch.Tensor]:
    """Drop exactly the leading prefix of m's checkpoint keys; refuse a key without it (FF's lenient loader
    would have skipped it silently, leaving that weight random)."""
    prefix = checkpoint_prefix(m)
    wrong = [k for k in state if not k.startswith(prefix)]
    if wrong:
        raise ValueError(f"{m.name}: {len(wrong)} key(s) without the {prefix!r} prefix, e.g. {wrong[0]!r}")
    return {k[len(prefix):]: v for k, v in state.items()}


@torch.inference_mode()
def image_group_probabilities(model: torch.nn.Module, crops_bgr: torch.Tensor, m: Member) -> torch.Tensor:
    """One face, one image member: P(fake) per group of 5 chosen frames (upstream `get_image_score` before its rule).

    Frames per `image_frame_indices`; with flip TTA the logits of each frame and its mirror are averaged; the
    logits of 5 consecutive chosen frames are averaged, then softmaxed. Returns (groups,), empty when fewer
    than 5 frames were chosen.
    """
    picked = image_frame_indices(len(crops_bgr))
    if not picked:
        return torch.zeros(0)
    x = image_input(crops_bgr[picked], m)
    logits = model(x)
    if m.flip:
        logits = (logits + model(torch.flip(x, dims=[3]))) / 2
    groups = logits.view(-1, GROUP_FRAMES, logits.shape[-1]).mean(dim=1)
    return torch.softmax(groups, dim=1)[:, 1]


@torch.inference_mode()
def clip_probabilities(model: torch.nn.Module, crops_bgr: torch.Tensor, m: Member) -> torch.Tensor:
    """All faces, one SlowFast member: P(fake) per face from one clip of every sampled frame (no TTA)."""
    return torch.softmax(model(clip_input(crops_bgr, m)), dim=1)[:, 1]

"""Boken: the DeeperForensics Challenge 2020 winner (team "Forensics") as packaged by IQT Labs' FakeFinder.

Three EfficientNets (B0, B1, B2) with a 2-class head, built by the authors with the
`efficientnet_pytorch` package. We rebuild each member from timm's non-TF `efficientnet_b0/b1/b2`
with BatchNorm eps 1e-3, and translate the upstream parameter names to timm's and back
(`upstream_to_ours`, `ours_to_upstream`). How stride-2 convolutions pad depends on the package
version that runs the weights, so it is a property of each weights row (`padding` in the
manifest): "0.6.3" (FakeFinder's deployed container, the default) pads them asymmetrically,
"0.7.0" symmetrically (timm's k//2); see `same_padding`. Written from the spec in the research notes
(sources: beibuwandeluori/DeeperForensicsChallengeSolution d19284d, IQTLabs/FakeFinder 780839f).
"""
from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import cv2
import numpy as np
import timm
import torch
from torch import nn
from torch.nn import functional as F

from detectors.base import CropPolicy, FaceFinder, SamplingPolicy, load_card
from detectors.ensemble import EnsembleDetector
from detectors.registry import register
from workbench.geometry import heatmap_into_rect
from detectors.weights import (
    WeightFile, WeightsError, as_fp32, check_state_dict, load_torch_checkpoint, manifest_files, manifest_path,
    strip_module_prefix,
)

NAME = "boken"
VARIANTS = ("efficientnet-b0", "efficientnet-b1", "efficientnet-b2")
_TIMM = {"efficientnet-b0": "efficientnet_b0", "efficientnet-b1": "efficientnet_b1", "efficientnet-b2": "efficientnet_b2"}
BN_EPS = 1e-3  # efficientnet_pytorch's batch_norm_epsilon
# efficientnet_pytorch's own resolution per variant; 0.6.3 computes every conv's padding from it.
IMAGE_SIZE = {"efficientnet-b0": 224, "efficientnet-b1": 240, "efficientnet-b2": 260}
PADDINGS = ("0.6.3", "0.7.0")  # the efficientnet_pytorch release whose padding a member reproduces
DEFAULT_PADDING = "0.6.3"  # FakeFinder's detectors/requirements.txt pins efficientnet_pytorch==0.6.3

# Raw upstream files (inside FakeFinder's boken.tar.gz, also on the authors' Google Drive) -> our files.
UPSTREAM = [
    {
        "variant": "efficientnet-b0",
        "raw": "boken/efn-b0_LS_27_loss_0.2205.pth",
        "file": "boken/efn-b0_LS_27_loss_0.2205.safetensors",
        "archive": "boken.tar.gz",
        "format": "bare state dict (torch.save(model.state_dict())), efficientnet_pytorch key names",
    },
    {
        "variant": "efficientnet-b1",
        "raw": "boken/efn-b1_LS_6_loss_0.1756.pth",
        "file": "boken/efn-b1_LS_6_loss_0.1756.safetensors",
        "archive": "boken.tar.gz",
        "format": "bare state dict (torch.save(model.state_dict())), efficientnet_pytorch key names",
    },
    {
        "variant": "efficientnet-b2",
        "raw": "boken/efn-b2_LS_12_loss_0.1728.pth",
        "file": "boken/efn-b2_LS_12_loss_0.1728.safetensors",
        "archive": "boken.tar.gz",
        "format": "bare state dict (torch.save(model.state_dict())), efficientnet_pytorch key names",
    },
]

CROP = CropPolicy(size=224, margin=0.1, square=True, pad=False)
SAMPLING = SamplingPolicy("even", count=15, faces="largest")
# Upstream: MTCNN(margin=14, keep_all=True, factor=0.6) on the full-resolution RGB frames, and
# `boxes[0]` per frame, the largest box (facenet-pytorch orders them largest first); thresholds
# and min_face_size are facenet-pytorch's defaults ((0.6, 0.7, 0.7), 20).
FACE_FINDER = FaceFinder(
    "mtcnn", keep="largest", scale=1.0, thresholds=(0.6, 0.7, 0.7), factor=0.6, min_face_size=20,
    source="IQTLabs/FakeFinder 780839f detectors/boken/ensemble.py (Ensemble.__init__) and "
           "detectors/boken/models/face_detector.py (crop_face: boxes[0]); the same in "
           "beibuwandeluori/DeeperForensicsChallengeSolution d19284d model/toy_predict.py, model/face_detector.py",
)


# -- architecture ---------------------------------------------------------------------------------
def same_padding(kernel: int, stride: int, size: int, padding: str) -> tuple[int, int]:
    """(before, after) zeros one efficientnet_pytorch "same" conv adds along one axis.

    Both releases total max((ceil(size/stride) - 1) * stride + kernel - size, 0); 0.6.3 puts the
    odd one after (TensorFlow's rule), 0.7.0 puts the rounded-up half on both sides. 0.6.3 takes
    `size` as the variant's image size for every layer, 0.7.0 as the layer's own input size.

    Args:
        kernel, stride: the conv's (square) kernel and stride.
        size: the input size the release computes the padding from.
        padding: "0.6.3" or "0.7.0".
    Returns:
        Zeros before (top/left) and after (bottom/right).
    """
    if padding not in PADDINGS:
        raise ValueError(f"unknown efficientnet_pytorch padding {padding!r}; expected one of {', '.join(PADDINGS)}")
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    if padding == "0.6.3":
        return total // 2, total - total // 2
    return total - total // 2, total - total // 2


class PaddedConv2d(nn.Conv2d):
    """A conv that zero-pads its input by fixed (left, right, top, bottom) amounts first; the same
    parameters (and state-dict keys) as the nn.Conv2d it replaces."""

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                         conv.dilation, conv.groups, conv.bias is not None)
        self.weight = conv.weight
        self.bias = conv.bias
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad={self.pad}"


def _pad_like_063(model: nn.Module, variant: str) -> None:
    """Replace each conv whose 0.6.3 padding differs from timm's symmetric one (the stride-2 ones)."""
    size = IMAGE_SIZE[variant]
    for name, conv in list(model.named_modules()):
        if type(conv) is not nn.Conv2d:
            continue
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        top, bottom = same_padding(kh, sh, size, "0.6.3")
        left, right = same_padding(kw, sw, size, "0.6.3")
        if (top, bottom, left, right) == (conv.padding[0],) * 2 + (conv.padding[1],) * 2:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, PaddedConv2d(conv, (left, right, top, bottom)))


def build_member(variant: str, padding: str = DEFAULT_PADDING) -> nn.Module:
    """One ensemble member: timm EfficientNet with BN eps 1e-3, a 2-way head, and the padding of
    efficientnet_pytorch `padding` ("0.6.3": asymmetric stride-2 padding; "0.7.0": timm's symmetric)."""
    if variant not in _TIMM:
        raise ValueError(f"unknown boken variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if padding not in PADDINGS:
        raise ValueError(f"unknown efficientnet_pytorch padding {padding!r}; expected one of {', '.join(PADDINGS)}")
    model = timm.create_model(_TIMM[variant], pretrained=False, num_classes=2)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = BN_EPS
    if padding == "0.6.3":
        _pad_like_063(model, variant)
    return model


def variant_of(path_or_name: str) -> str:
    """The EfficientNet variant a file is for, from its name (efn-b0_... -> efficientnet-b0)."""
    m = re.search(r"(?:efn|efficientnet)[-_]?(b[0-2])", Path(str(path_or_name)).name.lower())
    if not m:
        raise WeightsError(f"{path_or_name}: cannot tell which EfficientNet (b0/b1/b2) this file is for from its name")
    return f"efficientnet-{m.group(1)}"


def _stage_layout(model: nn.Module) -> list[tuple[int, int]]:
    """(stage, index) in timm's nested blocks for each flat efficientnet_pytorch block number."""
    return [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]


# efficientnet_pytorch block parts -> timm, for blocks with an expansion conv (InvertedResidual) ...
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"}
# ... and without one (expand ratio 1: DepthwiseSeparableConv).
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
       "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _is_ds(model: nn.Module, stage: int, index: int) -> bool:
    return not hasattr(model.blocks[stage][index], "conv_pwl")


def upstream_to_ours(key: str, model: nn.Module) -> str:
    """Translate one efficientnet_pytorch parameter name into the timm member's name.

    Raises:
        KeyError: the name has no counterpart in this member.
    """
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        flat, part, leaf = int(m.group(1)), m.group(2), m.group(3)
        layout = _stage_layout(model)
        if flat >= len(layout):
            raise KeyError(key)
        s, i = layout[flat]
        table = _DS if _is_ds(model, s, i) else _IR
        if part not in table:
            raise KeyError(key)
        return f"blocks.{s}.{i}.{table[part]}.{leaf}"
    m = re.fullmatch(r"(\w+)\.(\w+)", key)
    if m and m.group(1) in _TOP:
        return f"{_TOP[m.group(1)]}.{m.group(2)}"
    raise KeyError(key)


def ours_to_upstream(key: str, model: nn.Module) -> str:
    """Translate one timm member parameter name back into the efficientnet_pytorch name."""
    m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)", key)
    if m:
        s, i, part, leaf = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        flat = _stage_layout(model).index((s, i))
        table = _DS if _is_ds(model, s, i) else _IR
        inverse = {v: k for k, v in table.items()}
        if part not in inverse:
            raise KeyError(key)
        return f"_blocks.{flat}.{inverse[part]}.{leaf}"
    m = re.fullmatch(r"(\w+)\.(\w+)", key)
    inverse = {v: k for k, v in _TOP.items()}
    if m and m.group(1) in inverse:
        return f"{inverse[m.group(1)]}.{m.group(2)}"
    raise KeyError(key)


def upstream_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The member's weights under efficientnet_pytorch names (what the authors' files hold)."""
    return {ours_to_upstream(k, model): v for k, v in model.state_dict().items()}


def convert_checkpoint(raw_path: Path, variant: str | None = None) -> dict[str, torch.Tensor]:
    """Read one upstream boken checkpoint safely and return a state dict for one member.

    The file is read with weights_only=True; a `state_dict` wrapper and `module.` prefixes are
    accepted. The variant (b0/b1/b2) comes from the file name unless given.

    Raises:
        WeightsError: unreadable file, or keys/shapes that do not match the architecture exactly.
    """
    raw_path = Path(raw_path)
    variant = variant or variant_of(raw_path.name)
    ckpt = load_torch_checkpoint(raw_path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise WeightsError(f"{raw_path.name}: expected a state dict, found {type(state).__name__}")
    state = strip_module_prefix(state, raw_path.name)
    model = build_member(variant)
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            unexpected.append(key)
            continue
        try:
            ours = upstream_to_ours(key, model)
        except KeyError:
            ours = None
        if ours is None or ours not in expected:
            unexpected.append(key)
        else:
            out[ours] = value
    check_state_dict(out, expected, f"{raw_path.name}: not a boken {variant} checkpoint",
                     name_of=lambda k: ours_to_upstream(k, model), unexpected=unexpected)
    return as_fp32(out)


class BokenEnsemble(nn.Module):
    """The members side by side; forward gives each member's 2-class logits, stacked (M, N, 2)."""

    def __init__(self, variants: list[str], paddings: list[str] | None = None):
        super().__init__()
        self.variants = list(variants)
        self.paddings = list(paddings) if paddings is not None else [DEFAULT_PADDING] * len(self.variants)
        if len(self.paddings) != len(self.variants):
            raise ValueError(f"{len(self.variants)} variants but {len(self.paddings)} paddings")
        self.members = nn.ModuleList(build_member(v, p) for v, p in zip(self.variants, self.paddings))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members])


class FakeLogit(nn.Module):
    """One member as a single-logit model: fake-class logit minus real-class logit.

    sigmoid(l1 - l0) equals softmax(l)[1], so Grad-CAM and scores agree with the 2-class head.
    """

    def __init__(self, member: nn.Module):
        super().__init__()
        self.member = member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.member(x)
        return (logits[:, 1] - logits[:, 0])[:, None]


# -- model card ------------------------------------------------------------------------------------
def _default_weights() -> tuple[WeightFile, ...]:
    return manifest_files(NAME) or tuple(
        WeightFile(u["file"], sha256=None, source="FakeFinder boken.tar.gz / upstream Google Drive") for u in UPSTREAM
    )


def padding_of(file: str, manifest: Path | None = None) -> str:
    """The efficientnet_pytorch padding ("0.6.3" or "0.7.0") the manifest gives a boken weights file;
    DEFAULT_PADDING where its row says none (or it has no row).

    Raises:
        WeightsError: the row names a padding we do not reproduce.
    """
    path = Path(manifest or manifest_path())
    rows = tomllib.loads(path.read_text()).get("weights", []) if path.is_file() else []
    for row in rows:
        if row.get("detector") == NAME and row.get("file") == file:
            padding = row.get("padding", DEFAULT_PADDING)
            if padding not in PADDINGS:
                raise WeightsError(f"{path.name}: {file}: padding {padding!r} is not one of {', '.join(PADDINGS)}")
            return padding
    return DEFAULT_PADDING


def upstream_square(frame_shape: tuple[int, ...], box, scale: float = 1.2) -> tuple[int, int, int, int]:
    """The square upstream cuts for a face box: side int(1.2 x the longer box side) around the box's
    centre; its top-left corner clamped into the frame, and the side shrunk to fit (not padded)."""
    fh, fw = frame_shape[:2]
    x1, y1, x2, y2 = box
    side = int(max(x2 - x1, y2 - y1) * scale)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    left, top = max(int(cx - side // 2), 0), max(int(cy - side // 2), 0)
    side = min(fw - left, side)
    side = min(fh - top, side)
    return left, top, left + side, top + side


def aggregate_boken(member_scores: np.ndarray) -> float | None:
    """Upstream rule: mean over faces per member, mean over members, clipped to [0.01, 0.99]."""
    scores = np.asarray(member_scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None]
    if scores.size == 0 or scores.shape[-1] == 0:
        return None  # upstream gives 0.5 (unclipped) when no face was found
    return float(np.clip(scores.mean(axis=1).mean(), 0.01, 0.99))


@register
class Boken(EnsembleDetector):
    name = NAME
    # 1.1: upstream crops at frame edges; 1.2: efficientnet_pytorch 0.6.3 padding;
    # 1.3: the headline score is the authors' rule, and upstream's own MTCNN (factor 0.6, full
    # resolution) finds the face on every sampled frame
    version = "1.3"
    card = load_card(NAME)
    crop = CROP
    sampling = SAMPLING
    face_finder = FACE_FINDER
    mean = (0.0, 0.0, 0.0)  # the authors feed RGB / 255 with no mean/std normalisation
    std = (1.0, 1.0, 1.0)
    @property
    def weights(self) -> tuple[WeightFile, ...]:  # read at use: installs happen while the app runs
        return _default_weights()
    threshold = 0.5
    default = False
    batch_size = 16
    install_hint = "python -m workbench weights install boken"
    upstream_rule = (
        "FakeFinder/upstream: the largest face of 15 evenly spaced frames; each of the three models' "
        "fake probabilities (softmax, class 1) is averaged over the faces, the three averages are averaged, "
        "and the result is clipped to [0.01, 0.99]; 0.5 when no face is found."
    )

    def variants(self) -> list[str]:
        """The EfficientNet variant of each weight file, in order."""
        return [variant_of(w.file) for w in self.weights] or list(VARIANTS)

    def paddings(self) -> list[str]:
        """The efficientnet_pytorch padding of each weight file (its manifest row), in order."""
        return [padding_of(w.file) for w in self.weights] or [DEFAULT_PADDING] * len(VARIANTS)

    convert_checkpoint = staticmethod(convert_checkpoint)

    def build(self) -> nn.Module:
        return BokenEnsemble(self.variants(), self.paddings())

    def member_activation(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(outputs, dim=-1)[..., 1]  # the fake class of each member's 2-class head

    def cut(self, frame: np.ndarray, box, landmarks: np.ndarray | None) -> np.ndarray | None:
        """Upstream's crop: a 1.2x square clamped into the frame, resized to 224 with OpenCV's default
        (bilinear) interpolation."""
        x1, y1, x2, y2 = upstream_square(frame.shape, box)
        if x2 <= x1 or y2 <= y1:
            return None
        return cv2.resize(np.ascontiguousarray(frame[y1:y2, x1:x2]), (CROP.size, CROP.size))

    def place_heatmap(self, frame: np.ndarray, box, landmarks: np.ndarray | None, heatmap: np.ndarray) -> np.ndarray:
        return heatmap_into_rect(frame, upstream_square(frame.shape, box), heatmap)

    def upstream_aggregate(self, member_scores: np.ndarray) -> float | None:
        return aggregate_boken(member_scores)

    def gradcam_target(self, model: nn.Module) -> nn.Module:
        return FakeLogit(model.members[0]) if isinstance(model, BokenEnsemble) else model

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        member = model
        if isinstance(member, BokenEnsemble):
            member = member.members[0]
        if isinstance(member, FakeLogit):
            member = member.member
        return member.bn2  # conv_head + BN + swish: the last conv block's activations

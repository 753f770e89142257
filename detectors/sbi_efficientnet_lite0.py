"""An SBI detector on EfficientNet-Lite0, trained by this project on self-blended real faces (the candidate to replace sbi-mobilenetv2)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from detectors.base import load_card
from detectors.registry import register
from detectors.sbi import SbiDetector, measured_figures as _figures, read_metrics, threshold_from
from detectors.weights import WeightFile, WEIGHTS_DIR, manifest_files

NAME = "sbi-efficientnet-lite0"
METRICS = WEIGHTS_DIR / "sbi_efficientnet_lite0.metrics.json"
HELDOUT = "identities never trained on (3 GRID speakers and a fifth of the FairFace training half)"
# TensorFlow's EfficientNet-Lite models were trained on inputs scaled to [-1, 1].
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def build_model() -> nn.Module:
    """timm's tf_efficientnet_lite0 (TF 'same' padding, ReLU6, no squeeze-excite) with one logit."""
    import timm  # lazy: timm is heavy to import and only needed when this detector is built

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1)


def _metrics(path: Path = METRICS) -> dict | None:
    listed = manifest_files(NAME)
    return read_metrics(path, listed[0].sha256 if listed else None)


@register
class SbiEfficientNetLite0(SbiDetector):
    name = NAME
    version = "1.0"
    card = load_card(NAME, _figures(_metrics(), HELDOUT))
    mean = MEAN
    std = STD
    weights = manifest_files(NAME) or (WeightFile("sbi_efficientnet_lite0.safetensors", sha256=None),)
    threshold = threshold_from(_metrics())
    metrics = _metrics()
    install_hint = "python -m tools.training.train --arch efficientnet-lite0 (needs ../shared/data)"

    def build(self) -> nn.Module:
        return build_model()

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return model.bn2  # the last feature map (after conv_head), before pooling

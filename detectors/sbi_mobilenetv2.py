"""The reference detector: MobileNetV2 trained by this project on self-blended real faces (SBI)."""
from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision.models import mobilenet_v2

from detectors.base import load_card
from detectors.registry import register
from detectors.sbi import CROP, SbiDetector, measured_figures as _figures, read_metrics, threshold_from
from detectors.weights import WeightFile, WEIGHTS_DIR, manifest_files

NAME = "sbi-mobilenetv2"
METRICS = WEIGHTS_DIR / "sbi_mobilenetv2.metrics.json"
HELDOUT = "identities never trained on (3 GRID speakers and 54 photos of the FairFace training half)"
__all__ = ["CROP", "NAME", "build_model"]


def build_model() -> nn.Module:
    """torchvision MobileNetV2 with a single-logit head (dropout 0.2, as torchvision's)."""
    model = mobilenet_v2()
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(model.last_channel, 1))
    return model


def _metrics(path: Path = METRICS) -> dict | None:
    listed = manifest_files(NAME)
    return read_metrics(path, listed[0].sha256 if listed else None)


def operating_threshold(path: Path = METRICS) -> float:
    """The threshold the evaluation chose (5% FPR on held-out real faces), else 0.5."""
    return threshold_from(_metrics(path))


def measured_figures(path: Path = METRICS) -> str:
    """The card's figures, from the file `python -m tools.training.evaluate` writes."""
    return _figures(_metrics(path), HELDOUT)


@register
class SbiMobileNetV2(SbiDetector):
    name = NAME
    version = "2.0"
    card = load_card(NAME, measured_figures())
    # Without a manifest row the file is still expected; loading then refuses it as unverified.
    weights = manifest_files(NAME) or (WeightFile("sbi_mobilenetv2.safetensors", sha256=None),)
    threshold = operating_threshold()
    metrics = _metrics()
    default = True
    install_hint = "make train (the weights ship in weights/; retrain with make train if they are missing)"

    def build(self) -> nn.Module:
        return build_model()

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return model.features[-1]

"""The reference detector: MobileNetV2 trained by this project on self-blended real faces (SBI)."""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn
from torchvision.models import mobilenet_v2

from detectors.base import CropPolicy, Detector, SamplingPolicy, load_card
from detectors.weights import WeightFile, WEIGHTS_DIR
from detectors.registry import register
from detectors.weights import load_safetensors_strict, manifest_files

NAME = "sbi-mobilenetv2"
METRICS = WEIGHTS_DIR / "sbi_mobilenetv2.metrics.json"
# Crops are cut with a quarter of the face box added on each side, squared, at 192 px: the
# training pipeline cuts its crops the same way (see tools/training/data.py).
CROP = CropPolicy(size=192, margin=0.25, square=True, pad=False)


def build_model() -> nn.Module:
    """torchvision MobileNetV2 with a single-logit head (dropout 0.2, as torchvision's)."""
    model = mobilenet_v2()
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(model.last_channel, 1))
    return model


def _metrics(path: Path = METRICS) -> dict | None:
    """The evaluation's figures, only if they were measured on the weights the manifest lists."""
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    listed = manifest_files(NAME)
    if not listed or m.get("weights_sha256") != listed[0].sha256 or "operating_threshold" not in m:
        return None
    return m


def operating_threshold(path: Path = METRICS) -> float:
    """The threshold the evaluation chose (5% FPR on held-out real faces), else 0.5."""
    m = _metrics(path)
    return float(m["operating_threshold"]["value"]) if m else 0.5


def measured_figures(path: Path = METRICS) -> str:
    """The card's figures, from the file `python -m tools.training.evaluate` writes."""
    m = _metrics(path)
    if m is None:
        return "Not measured for these weights yet: run python -m tools.training.evaluate."
    sbi, demo, speed = m["heldout_sbi"], m["demo_clip"], m["speed_cpu"]
    op, half = sbi["at_operating_threshold"], sbi["at_0.5"]
    return (
        f"Held-out identities ({len(sbi['identities'])} GRID speakers never trained on), real vs self-blended "
        f"crops: ROC AUC {sbi['roc_auc']:.3f}, TPR {sbi['tpr_at_1pct_fpr']:.1%} at 1% FPR and "
        f"{sbi['tpr_at_10pct_fpr']:.1%} at 10% FPR ({sbi['positives']} + {sbi['negatives']} crops). "
        f"Operating threshold {op['threshold']:.3f}, chosen on those real crops for at most 5% FPR "
        f"(TPR there {op['tpr']:.1%}); at 0.5 the FPR would be {half['fpr']:.1%}. "
        f"Demo clip, every frame, swapped face in its segment vs every clean face crop: ROC AUC "
        f"{demo['roc_auc']:.3f}, TPR {demo['tpr_at_10pct_fpr']:.1%} at 10% FPR; at the operating threshold "
        f"FPR {demo['at_operating_threshold']['fpr']:.1%}, TPR {demo['at_operating_threshold']['tpr']:.1%}; mean score "
        f"{demo['mean_score']['swapped']:.2f} on swapped crops, {demo['mean_score']['target_clean']:.2f} on the same "
        f"face unswapped, {demo['mean_score']['other_faces']:.2f} on the other face (the demo's faces are photos "
        f"pasted on a drawn background, itself a kind of blend). Not measured on real deepfake data sets "
        f"(DFDC, FaceForensics++) or per demographic group. Speed on 2 CPU cores: {speed['crops_per_s']:.0f} "
        f"crops/s, Grad-CAM {speed['gradcam_ms_per_crop']:.0f} ms per crop. Measured by: {m['command']}."
    )


@register
class SbiMobileNetV2(Detector):
    name = NAME
    version = "1.0"
    card = load_card(NAME, measured_figures())
    crop = CROP
    sampling = SamplingPolicy("analysed")
    # Without a manifest row the file is still expected; loading then refuses it as unverified.
    weights = manifest_files(NAME) or (WeightFile("sbi_mobilenetv2.safetensors", sha256=None),)
    threshold = operating_threshold()
    default = True
    batch_size = 32
    install_hint = "make train (the weights ship in weights/; retrain with make train if they are missing)"

    def build(self) -> nn.Module:
        return build_model()

    def threshold_note(self) -> str | None:
        m = _metrics()
        if m is None:
            return None
        op = m["heldout_sbi"]["at_operating_threshold"]
        return (f"At {op['threshold']:.3f}: {op['fpr']:.1%} false positives and {op['tpr']:.1%} detections on held-out "
                f"real and self-blended crops of 3 GRID speakers (chosen there for at most 5% FPR; optimistic).")

    def load_weights(self, model: nn.Module) -> str:
        return load_safetensors_strict(model, self.weights[0])

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return model.features[-1]

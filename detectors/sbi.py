"""What every Self-Blended-Images detector shares (shipped or trained by a user): crop, metrics file, operating threshold, card figures, strict loading."""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from detectors.base import CropPolicy, Detector, SamplingPolicy
from detectors.weights import load_safetensors_strict

# Crops are cut with a quarter of the face box added on each side, squared, at 192 px: the
# training pipeline cuts its crops the same way (see tools/training/data.py).
CROP = CropPolicy(size=192, margin=0.25, square=True, pad=False)


# TensorFlow's EfficientNet-Lite models were trained on inputs scaled to [-1, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def build_efficientnet_lite0() -> nn.Module:
    """timm's tf_efficientnet_lite0 (TF 'same' padding, ReLU6, no squeeze-excite) with one logit.

    No shipped detector uses it (it lost to MobileNetV2 on the development set, see README);
    `python -m workbench train --arch efficientnet-lite0` can.
    """
    import timm  # lazy: timm is heavy to import and only needed when this architecture is built

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1)


def read_metrics(path: Path, weights_sha256: str | None) -> dict | None:
    """The evaluation's figures, only if they were measured on these exact weights."""
    if not path.is_file() or not weights_sha256:
        return None
    m = json.loads(path.read_text())
    if m.get("weights_sha256") != weights_sha256 or "operating_threshold" not in m:
        return None
    return m


def threshold_from(m: dict | None) -> float:
    """The threshold the evaluation chose (5% FPR on held-out real faces), else 0.5."""
    return float(m["operating_threshold"]["value"]) if m else 0.5


def heldout_sentence(sbi: dict, who: str) -> str:
    """The held-out real-vs-self-blended figures in one sentence."""
    op, half = sbi["at_operating_threshold"], sbi["at_0.5"]
    return (
        f"Held-out {who}, real vs self-blended crops: ROC AUC {sbi['roc_auc']:.3f}, TPR {sbi['tpr_at_1pct_fpr']:.1%} "
        f"at 1% FPR and {sbi['tpr_at_10pct_fpr']:.1%} at 10% FPR ({sbi['positives']} + {sbi['negatives']} crops). "
        f"Operating threshold {op['threshold']:.3f}, chosen on those real crops for at most 5% FPR "
        f"(TPR there {op['tpr']:.1%}); at 0.5 the FPR would be {half['fpr']:.1%}."
    )


def measured_figures(m: dict | None, who: str) -> str:
    """A shipped SBI detector's card figures, from the file `python -m tools.training.evaluate` writes."""
    if m is None:
        return "Not measured for these weights yet: run python -m tools.training.evaluate."
    demo, speed = m["demo_clip"], m["speed_cpu"]
    return (
        f"{heldout_sentence(m['heldout_sbi'], who)} "
        f"Demo clip, every frame, swapped face in its segment vs every clean face crop: ROC AUC "
        f"{demo['roc_auc']:.3f}, TPR {demo['tpr_at_10pct_fpr']:.1%} at 10% FPR; at the operating threshold "
        f"FPR {demo['at_operating_threshold']['fpr']:.1%}, TPR {demo['at_operating_threshold']['tpr']:.1%}; mean score "
        f"{demo['mean_score']['swapped']:.2f} on swapped crops, {demo['mean_score']['target_clean']:.2f} on the same "
        f"face unswapped, {demo['mean_score']['other_faces']:.2f} on the other face (the demo's faces are photos "
        f"pasted on a drawn background, itself a kind of blend). Speed on 2 CPU cores: {speed['crops_per_s']:.0f} "
        f"crops/s, Grad-CAM {speed['gradcam_ms_per_crop']:.0f} ms per crop. Measured by: {m['command']}."
    )


class SbiDetector(Detector):
    """A single-logit SBI classifier on 192-px crops, loaded strictly from one safetensors file."""

    crop = CROP
    sampling = SamplingPolicy("analysed")
    batch_size = 32
    metrics: dict | None = None  # the evaluation record of the listed weights, when there is one

    def load_weights(self, model: nn.Module) -> str:
        return load_safetensors_strict(model, self.weights[0])

    def threshold_note(self) -> str | None:
        if self.metrics is None:
            return None
        op = self.metrics["heldout_sbi"]["at_operating_threshold"]
        who = self.metrics.get("heldout_who", "held-out identities")
        return (f"At {op['threshold']:.3f}: {op['fpr']:.1%} false positives and {op['tpr']:.1%} detections on "
                f"real and self-blended crops of {who} (chosen there for at most 5% FPR; optimistic).")

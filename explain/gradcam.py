"""Grad-CAM for detectors: a heatmap over the exact input the model saw, and in place on the frame."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

from detectors.base import Detector
from workbench.geometry import blend_heatmap


@dataclass
class Explanation:
    """Grad-CAM of one face crop for one detector.

    heatmap: float32 (size, size) in [0, 1], where the 'manipulated' logit looked.
    model_input: uint8 RGB (size, size, 3), the crop exactly as it was fed (before normalisation).
    score: the detector's probability for this crop.
    """

    heatmap: np.ndarray
    model_input: np.ndarray
    score: float

    def overlay(self, alpha: float = 0.45) -> np.ndarray:
        """The heatmap blended over the model input (uint8 RGB)."""
        return blend_heatmap(self.model_input, self.heatmap, alpha)


def explain(detector: Detector, crop: np.ndarray) -> Explanation:
    """Grad-CAM on the detector's Grad-CAM layer for the 'manipulated' output.

    Args:
        detector: a loaded (or loadable) detector.
        crop: uint8 RGB (size, size, 3) cut with the detector's crop policy.

    Returns:
        Explanation with a heatmap of the crop's size.
    """
    model = detector.gradcam_target(detector.model())
    x = detector.preprocess(crop[None])
    # The model is shared between sessions: its hooks must not see another caller's forward pass.
    with detector.model_lock(), GradCAM(model=model, target_layers=[detector.gradcam_layer(model)]) as cam:
        heat = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)])[0]
        # The forward pass GradCAM already ran gives the score for free.
        logits = cam.outputs
    score = float(torch.sigmoid(logits.detach().float().reshape(-1)[0]))
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != crop.shape[:2]:
        heat = cv2.resize(heat, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    return Explanation(heatmap=heat, model_input=crop, score=score)

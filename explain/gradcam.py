"""Grad-CAM for detectors: a heatmap over the exact input the model saw, and in place on the frame."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

from detectors.base import CropPolicy, Detector
from workbench.faces import crop_rect


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


def blend_heatmap(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    colour = cv2.applyColorMap(np.uint8(255 * np.clip(heatmap, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8(np.clip((1 - alpha) * rgb + alpha * colour, 0, 255))


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
    with GradCAM(model=model, target_layers=[detector.gradcam_layer(model)]) as cam:
        heat = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)])[0]
        # The forward pass GradCAM already ran gives the score for free.
        logits = cam.outputs
    score = float(torch.sigmoid(logits.detach().float().reshape(-1)[0]))
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != crop.shape[:2]:
        heat = cv2.resize(heat, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    return Explanation(heatmap=heat, model_input=crop, score=score)


def heatmap_on_frame(frame: np.ndarray, box, policy: CropPolicy, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Put a crop's heatmap back where the crop came from on the full frame (uint8 RGB)."""
    x1, y1, x2, y2 = crop_rect(box, policy)
    fh, fw = frame.shape[:2]
    if policy.pad:
        # Undo the isotropic resize and padding of crop_face: keep the part that holds the region.
        rw, rh = x2 - x1, y2 - y1
        scale = policy.size / max(rw, rh)
        nw, nh = max(1, round(rw * scale)), max(1, round(rh * scale))
        top, left = (policy.size - nh) // 2, (policy.size - nw) // 2
        heatmap = heatmap[top : top + nh, left : left + nw]
    full = cv2.resize(heatmap, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    sx1, sy1, sx2, sy2 = max(0, x1), max(0, y1), min(fw, x2), min(fh, y2)
    out = frame.copy()
    if sx2 > sx1 and sy2 > sy1:
        region = out[sy1:sy2, sx1:sx2]
        out[sy1:sy2, sx1:sx2] = blend_heatmap(region, full[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1], alpha)
    return out

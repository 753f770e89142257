"""Runs each FakeFinder detector with its real weights when they are installed (skipped otherwise)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.ensemble import EnsembleDetector
from detectors.registry import detector_class, get_detector, list_detectors

# Every reproduced upstream detector (discovered: the ensembles reproduced from FakeFinder).
FAKEFINDER = [n for n in list_detectors() if issubclass(detector_class(n), EnsembleDetector)]


def demo_face():
    import matplotlib
    from PIL import Image

    from workbench.faces import FaceDetector

    rgb = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    face = FaceDetector().detect([rgb])[0][0]
    return rgb, face


@pytest.mark.real_weights
@pytest.mark.parametrize("name", FAKEFINDER)
def test_real_weights_load_strictly_and_score_a_face(name):
    det = get_detector(name)
    status = det.weights_status()
    if not status.installed:
        pytest.skip(f"{name}: {status.detail}")
    det.model("cpu")  # verifies every file's sha256 and loads strictly, or raises
    rgb, face = demo_face()
    crop = det.cut(rgb, face.box, np.asarray(face.landmarks, np.float32))
    assert crop is not None
    probs = det.predict(crop[None])
    assert probs.shape == (1,) and np.isfinite(probs).all() and 0.0 <= probs[0] <= 1.0

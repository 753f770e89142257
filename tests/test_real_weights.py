"""Runs each FakeFinder detector with its real weights when they are installed (skipped otherwise)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.ensemble import EnsembleDetector
from detectors.registry import detector_class, get_detector, list_detectors
from helpers import combine_by_hand, member_probabilities_by_hand

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
    crops = np.stack([crop, crop[:, ::-1]])
    members = det.predict_members(crops)
    # Every member's probability, recomputed from its module with the authors' inputs written out,
    # and the authors' combination of them: a member loaded into the wrong slot or fed the wrong
    # normalisation gives other numbers.
    by_hand = member_probabilities_by_hand(name, det.model(), crops)
    np.testing.assert_allclose(members, by_hand, atol=1e-4)
    probs = det.predict(crops)
    assert probs.shape == (2,)
    np.testing.assert_allclose(probs, combine_by_hand(name, by_hand), atol=1e-4)

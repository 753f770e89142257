"""Runs each FakeFinder detector with its real weights when they are installed (skipped otherwise)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from detectors.ensemble import EnsembleDetector
from detectors.registry import detector_class, get_detector, list_detectors
from detectors.video import VideoDetector
from detectors.weights import weights_dir
from helpers import REFERENCE_SCORES_NAME, combine_by_hand, member_probabilities_by_hand, score_against_reference
from workbench import demo

# Every reproduced upstream detector (discovered: the ensembles reproduced from FakeFinder, which
# score crops, and the video-level ones, which judge whole videos their authors' way).
FAKEFINDER = [n for n in list_detectors() if issubclass(detector_class(n), EnsembleDetector)]
VIDEO_LEVEL = [n for n in list_detectors() if issubclass(detector_class(n), VideoDetector)]


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


@pytest.fixture(scope="module")
def reference_clips(tmp_path_factory):
    """The demo scene (public-domain photos, fixed seed), 4 s at 25 fps in 720p: untouched ("real") and
    with Grace Hopper's inner face swapped for the astronaut's throughout ("fake")."""
    out = tmp_path_factory.mktemp("reference-clips")
    scene = dict(seconds=4.0, fps=25, width=1280, height=720, seed=0)
    demo.make_clip(out / "demo-real.mp4", demo.demo_faces(), **scene)
    demo.make_clip(out / "demo-swapped.mp4", demo.demo_faces(), **scene, swap=(0.0, 4.0),
                   swap_target=demo.DEMO_SWAP_TARGET, swap_donor=demo.DEMO_SWAP_DONOR)
    return {"real": out / "demo-real.mp4", "fake": out / "demo-swapped.mp4"}


@pytest.mark.real_weights
@pytest.mark.parametrize("name", VIDEO_LEVEL)
def test_real_video_level_weights_load_strictly_and_every_member_scores_the_swapped_clip(name, request):
    """With its real weights, a video-level detector finds the face of the swapped reference clip its
    own way and every member gives a value (an optional member not installed is named unavailable)."""
    det = get_detector(name)
    status = det.weights_status()
    if not status.installed:
        pytest.skip(f"{name}: {status.detail}")
    det.model("cpu")  # verifies every file's sha256 and loads strictly, or raises
    clips = request.getfixturevalue("reference_clips")
    from workbench.pipeline import Sampling, analyze  # lazy: only with real weights installed

    outcome = analyze(clips["fake"], {name: det}, Sampling()).detectors[name]
    assert outcome.status == "ok", outcome.reason
    members = outcome.upstream["members"]
    assert members and all(m["status"] == "ok" or (m["status"] == "unavailable" and m["reason"]) for m in members), members
    assert outcome.upstream["faces"], "its own face finding found the face"


@pytest.mark.real_weights
@pytest.mark.parametrize("name", FAKEFINDER + VIDEO_LEVEL)
def test_real_weights_score_the_fixed_clips_as_recorded_and_the_fake_higher(name, request):
    """Each detector's headline score on two fixed clips equals the score recorded by the first run with
    the same version, weights and clip (within 1e-3; recorded beside the weights, trust on first use),
    and the swapped clip scores above the untouched one."""
    det = get_detector(name)
    status = det.weights_status()
    if not status.installed:
        pytest.skip(f"{name}: {status.detail}")
    clips = request.getfixturevalue("reference_clips")  # made only when some weights are installed
    path = weights_dir() / REFERENCE_SCORES_NAME
    scores = {}
    for kind, clip in clips.items():
        outcome, check = score_against_reference(det, clip, path)
        if check.recorded:
            warnings.warn(f"{check.message} (in {path})", stacklevel=1)
        assert check.matches, check.message
        scores[kind] = outcome.score
    assert scores["fake"] > scores["real"], f"{name}: swapped {scores['fake']:.4f} <= untouched {scores['real']:.4f}"

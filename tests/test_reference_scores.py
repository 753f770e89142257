"""The record-then-compare logic behind tests/test_real_weights.py, proven without the real weights."""
from __future__ import annotations

import json

import pytest

from detectors.registry import get_detector
from helpers import REFERENCE_SCORES_NAME, check_reference_score, score_against_reference
from workbench.pipeline import Sampling

KEY = dict(detector="det", version="1.0", weights_sha256="a" * 64, clip="clip.mp4", clip_sha256="c" * 64)


def test_first_use_records_then_compares_within_the_tolerance(tmp_path):
    path = tmp_path / REFERENCE_SCORES_NAME
    first = check_reference_score(path, **KEY, score=0.4321)
    assert first.recorded and first.matches and "trust on first use" in first.message
    stored = json.loads(path.read_text())["references"]
    assert [r["score"] for r in stored.values()] == [0.4321]
    close = check_reference_score(path, **KEY, score=0.4321 + 9e-4)
    assert not close.recorded and close.matches and close.reference == 0.4321
    before = path.read_text()
    far = check_reference_score(path, **KEY, score=0.4321 + 2e-3)
    assert not far.recorded and not far.matches and "differs from the reference 0.432100" in far.message
    assert path.read_text() == before  # a mismatch never replaces its reference


@pytest.mark.parametrize("field, label", [("version", "version 1.0 -> 1.1"),
                                          ("weights_sha256", "weights " + "a" * 64 + " -> " + "b" * 64),
                                          ("clip_sha256", "clip sha256 " + "c" * 64 + " -> " + "d" * 64)])
def test_a_new_version_weights_or_clip_records_anew_and_says_what_changed(tmp_path, field, label):
    path = tmp_path / REFERENCE_SCORES_NAME
    check_reference_score(path, **KEY, score=0.2)
    changed = dict(KEY, **{field: {"version": "1.1", "weights_sha256": "b" * 64, "clip_sha256": "d" * 64}[field]})
    anew = check_reference_score(path, **changed, score=0.9)  # far from 0.2: a new key, not a mismatch
    assert anew.recorded and anew.matches and f"recorded anew ({label})" in anew.message
    assert sorted(r["score"] for r in json.loads(path.read_text())["references"].values()) == [0.2, 0.9]
    assert check_reference_score(path, **KEY, score=0.2).matches  # the old reference stays for the old key


@pytest.mark.parametrize("score", [None, float("nan"), float("inf")])
def test_a_failure_is_never_recorded_as_a_reference(tmp_path, score):
    path = tmp_path / REFERENCE_SCORES_NAME
    with pytest.raises(ValueError, match="no finite score"):
        check_reference_score(path, **KEY, score=score)
    assert not path.exists()


def test_a_file_that_is_not_a_reference_file_is_refused(tmp_path):
    path = tmp_path / REFERENCE_SCORES_NAME
    path.write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="not a reference-score file"):
        check_reference_score(path, **KEY, score=0.5)


def test_a_detector_with_shipped_weights_reproduces_its_recorded_score(tmp_path, two_face_clip):
    """End to end as the real-weights test does it: sbi-mobilenetv2 (weights in the repository) on a
    fixed clip records its headline score, then a fresh instance matches it; a bumped version records anew."""
    path = tmp_path / REFERENCE_SCORES_NAME
    clip, _ = two_face_clip
    sampling = Sampling(sample_fps=2)
    first_outcome, first = score_against_reference(get_detector("sbi-mobilenetv2"), clip, path, sampling)
    assert first.recorded and first_outcome.weights_sha256
    again_outcome, again = score_against_reference(get_detector("sbi-mobilenetv2"), clip, path, sampling)
    assert not again.recorded and again.matches, again.message
    assert again.reference == first_outcome.score
    bumped_cls = type(get_detector("sbi-mobilenetv2"))
    bumped = type("Bumped", (bumped_cls,), {"version": bumped_cls.version + "-next"})()
    _, anew = score_against_reference(bumped, clip, path, sampling)
    assert anew.recorded and f"version {bumped_cls.version} -> {bumped.version}" in anew.message

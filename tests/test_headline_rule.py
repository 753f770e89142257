"""A reproduced detector's headline score is its authors' video rule; our track rule explains it; gates stay ours."""
from __future__ import annotations

import html

import numpy as np
import pytest

from detectors import selimsef
from detectors.registry import register, unregister
from helpers import default_rule_by_hand
from tiny_detector import TinyDetector
from workbench import review
from workbench.aggregate import Rule, score_rules
from workbench.cli import render_text
from workbench.evidence import ingest
from workbench.pipeline import Sampling, analyze
from workbench.report import case_report
from workbench.service import analyse_evidence

SAMPLING = Sampling(sample_fps=None, detect_every=2)


def brightness(crops: np.ndarray) -> np.ndarray:
    """A score that differs from face to face and frame to frame: the crop's mean brightness."""
    return crops.reshape(len(crops), -1).mean(axis=1) / 255.0


class TinyAuthors(TinyDetector):
    """One member scoring brightness; the authors' video rule is selimsef's (confident strategy, mean)."""

    name = "tiny-authors"
    upstream_rule = "confident strategy over all faces (selimsef's rule)"

    def predict(self, crops):
        return brightness(crops)

    def upstream_aggregate(self, member_scores):
        return selimsef.aggregate_selimsef(member_scores)


class NoAuthorsScore(TinyAuthors):
    name = "tiny-authors-none"

    def upstream_aggregate(self, member_scores):
        return None


class AuthorsFail(TinyAuthors):
    name = "tiny-authors-fail"

    def upstream_aggregate(self, member_scores):
        raise ValueError("simulated rule failure")


class AuthorsNaN(TinyAuthors):
    name = "tiny-authors-nan"

    def upstream_aggregate(self, member_scores):
        return float("nan")


ALL = (TinyAuthors, NoAuthorsScore, AuthorsFail, AuthorsNaN)


@pytest.fixture(scope="module")
def authors_detectors(tiny_detectors):
    for cls in ALL:
        unregister(cls.name)
        register(cls)
    yield
    for cls in ALL:
        unregister(cls.name)


def authors_by_hand(frame_scores) -> float:
    """selimsef's rule from the frame scores (one member, so they are its face scores, in order)."""
    faces = [s for _, _, s in frame_scores][: selimsef.MAX_FACES]
    return selimsef.confident_strategy(faces)


@pytest.fixture(scope="module")
def analysed(authors_detectors, two_face_clip, tmp_path_factory):
    """The two-face clip analysed and stored with the authors'-rule detector and a plain one, in a case."""
    from workbench.store import Store

    store = Store(":memory:")
    case_id = store.create_case("headline", actor="ann")
    path, _ = two_face_clip
    ev = ingest(store, path, "two.mp4", tmp_path_factory.mktemp("evidence"), actor="ann", case_id=case_id)
    result = analyse_evidence(store, ev["sha256"], ["tiny-authors", "tiny-test"], SAMPLING)
    yield {"store": store, "case_id": case_id, "sha256": ev["sha256"], "result": result}
    store.close()


def test_headline_is_the_authors_rule_and_ours_explains_it(analysed):
    outcome = analysed["result"].detectors["tiny-authors"]
    assert outcome.status == "ok"
    authors = authors_by_hand(outcome.frame_scores)
    ours = default_rule_by_hand(outcome.frame_scores)
    # A video on which the two rules disagree, or this test would prove nothing.
    assert abs(authors - ours) > 0.01
    assert outcome.score == pytest.approx(authors, abs=1e-12)
    assert outcome.rule == "authors:tiny-authors"
    assert outcome.upstream["score"] == outcome.score
    assert outcome.upstream["track_score"] == pytest.approx(ours, abs=1e-12)
    assert outcome.upstream["track_rule"] == SAMPLING.rule.name
    assert outcome.upstream["rule"] == TinyAuthors.upstream_rule
    # The plain detector is untouched: its headline is our track rule.
    plain = analysed["result"].detectors["tiny-test"]
    assert plain.score == pytest.approx(default_rule_by_hand(plain.frame_scores)) and plain.upstream is None


def test_stored_reused_and_json_scores_are_the_authors(analysed):
    store, sha = analysed["store"], analysed["sha256"]
    outcome = analysed["result"].detectors["tiny-authors"]
    row = next(a for a in store.analyses(sha) if a["detector"] == "tiny-authors")
    assert row["score"] == outcome.score and row["rule"] == "authors:tiny-authors"
    assert row["upstream"] == outcome.upstream  # our track rule and its score travel in the stored JSON
    assert analysed["result"].to_json()["detectors"]["tiny-authors"]["score"] == outcome.score
    again = analyse_evidence(store, sha, ["tiny-authors"], SAMPLING).detectors["tiny-authors"]
    assert again.reused and again.score == outcome.score and again.upstream == outcome.upstream
    view = review.load_review(store, sha).detectors["tiny-authors"]
    assert view.score == outcome.score
    said = score_rules(view.status, view.rule, view.upstream)
    assert said["headline"] == f"authors' rule: {TinyAuthors.upstream_rule}"
    assert said["explanation"].startswith(f"our track rule gives {outcome.upstream['track_score']:.3f}")


def test_ensemble_combines_the_headline_scores(analysed):
    result = analysed["result"]
    authors, plain = result.detectors["tiny-authors"], result.detectors["tiny-test"]
    assert result.ensemble["members"] == ["tiny-authors", "tiny-test"]
    assert result.ensemble["score"] == pytest.approx((authors.score + plain.score) / 2, abs=1e-12)
    assert result.ensemble["score"] != pytest.approx((authors.upstream["track_score"] + plain.score) / 2, abs=1e-3)
    stored = analysed["store"].db.execute("SELECT score FROM ensembles WHERE id = ?",
                                          [result.ensemble["ensemble_id"]]).fetchone()[0]
    assert stored == pytest.approx(result.ensemble["score"], abs=1e-12)


def test_report_and_cli_name_the_rule_that_made_the_number(analysed):
    outcome = analysed["result"].detectors["tiny-authors"]
    text = render_text(analysed["result"].to_json())
    block = text[text.index("tiny-authors") :]
    assert f"{outcome.score:.3f}" in block.splitlines()[0]
    assert f"authors' rule: {TinyAuthors.upstream_rule}" in block
    assert f"explanation: our track rule gives {outcome.upstream['track_score']:.3f}" in block
    doc = case_report(analysed["store"], analysed["case_id"], actor="ann", with_heatmaps=False)
    assert html.escape(f"authors' rule: {TinyAuthors.upstream_rule}", quote=True) in doc
    assert html.escape(f"our track rule gives {outcome.upstream['track_score']:.3f}", quote=True) in doc
    assert f"<strong>{outcome.score:.3f}</strong>" in doc


def test_no_face_is_inconclusive_with_no_number_anywhere(authors_detectors, no_face_clip):
    outcome = analyze(no_face_clip, ["tiny-authors"], SAMPLING).detectors["tiny-authors"]
    assert outcome.status == "inconclusive" and outcome.score is None and "no face" in outcome.reason
    assert outcome.upstream["score"] is None and outcome.upstream["track_score"] is None


def test_our_gates_decide_even_when_the_authors_rule_could_score(authors_detectors, two_face_clip):
    path, _ = two_face_clip
    strict = Sampling(sample_fps=None, detect_every=2, rule=Rule(min_frames=10_000))
    result = analyze(path, ["tiny-authors", "tiny-test"], strict)
    outcome = result.detectors["tiny-authors"]
    assert outcome.frame_scores  # faces were scored: the authors' rule alone would give a number
    assert outcome.status == "inconclusive" and outcome.score is None and "too few frames" in outcome.reason
    assert outcome.upstream["score"] is None and outcome.upstream["track_score"] is None
    assert result.ensemble["score"] is None and result.ensemble["status"] == "inconclusive"
    assert "authors' rule" not in render_text(result.to_json())  # no rule line where there is no number


@pytest.mark.parametrize("name, status, reason", [
    ("tiny-authors-none", "inconclusive", "the authors' video rule gives no score on the"),
    ("tiny-authors-fail", "error", "the authors' video rule failed: ValueError: simulated rule failure"),
    ("tiny-authors-nan", "error", "the authors' video rule gave a non-finite score"),
])
def test_no_authors_score_means_no_number_never_a_fallback(authors_detectors, two_face_clip, name, status, reason):
    path, _ = two_face_clip
    result = analyze(path, [name, "tiny-test"], SAMPLING)
    outcome = result.detectors[name]
    assert outcome.frame_scores and default_rule_by_hand(outcome.frame_scores) is not None  # our gates said ok
    assert outcome.status == status and outcome.score is None and outcome.reason.startswith(reason)
    assert outcome.upstream["score"] is None and outcome.upstream["track_score"] is None
    assert result.ensemble["members"] == ["tiny-test"] and result.ensemble["left_out"] == {name: status}
    assert score_rules(outcome.status, outcome.rule, outcome.upstream)["explanation"] is None


def test_selimsef_gives_no_score_where_the_authors_code_answered_its_fallback():
    # Upstream squeezes a one-face batch to a 0-d tensor, cannot slice it and answers 0.5.
    assert selimsef.aggregate_selimsef(np.full((7, 1), 0.9)) is None
    assert selimsef.aggregate_selimsef(np.zeros((7, 0))) is None
    assert selimsef.aggregate_selimsef(np.full((7, 2), 0.9)) == pytest.approx(0.9)


def test_results_stored_before_the_change_keep_their_meaning():
    old = {"rule": "confident strategy", "score": 0.25}
    said = score_rules("ok", SAMPLING.rule.name, old)
    assert said["headline"] == f"our track rule: {SAMPLING.rule.describe()}"
    assert said["explanation"] == "authors' rule gives 0.250 (confident strategy)"
    assert score_rules("inconclusive", SAMPLING.rule.name, old)["explanation"] is None
    assert score_rules("ok", "authors:x", {"rule": "r", "score": 0.5, "track_rule": "?", "track_score": 0.7})[
        "explanation"] == "our track rule gives 0.700 (?)"


def test_reproduced_detectors_are_versioned_and_carded_for_the_new_headline():
    from detectors import boken, wm

    for cls, version in ((selimsef.Selimsef, "1.2"), (boken.Boken, "1.3"), (wm.WM, "1.1")):
        assert cls.upstream_rule
        assert cls.version == version
        summary = cls.card.summary
        assert f"Since version {version} the video score" in summary and "authors' own rule" in summary


def test_a_new_detector_version_does_not_reuse_results_stored_under_the_old_one(analysed):
    # Reuse is keyed by the detector's version (in its description and its row): results stored under
    # the old meaning of `score` are recomputed, not served.
    bumped = type("Bumped", (TinyAuthors,), {"version": TinyAuthors.version + ".1"})()
    again = analyse_evidence(analysed["store"], analysed["sha256"], {"tiny-authors": bumped}, SAMPLING)
    assert not again.detectors["tiny-authors"].reused

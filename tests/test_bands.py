"""Bands: one rule (aggregate.band) turns a score and its threshold into flagged / uncertain / not
flagged, with the FPR an evaluation measured at that threshold; the CLI and the report show it."""
from __future__ import annotations

import pytest

from workbench.aggregate import UNCERTAIN_MARGIN, band, band_text, measured_fpr
from workbench.cli import render_text
from workbench.report import _detector_section
from workbench.review import DetectorView, ReviewData


def evaluation(threshold: float, fpr: float | None, real: int = 270, dataset: str = "fairface_eval.csv") -> dict:
    """A stored evaluation row as Store.latest_evaluation returns it (only what the band reads)."""
    k = None if fpr is None else round(fpr * real)
    return {"evaluation_id": 7, "dataset": dataset, "threshold": threshold,
            "result": {"threshold": threshold,
                       "metrics": {"operating_point": {"fpr": {"value": fpr, "k": k, "n": real}}}}}


@pytest.mark.parametrize("score, threshold, expected", [
    (0.92, 0.92, "flagged"),           # at the threshold is flagged, as crossing_frames and the report count it
    (0.99, 0.92, "flagged"),
    (0.919, 0.92, "uncertain"),
    (0.92 - UNCERTAIN_MARGIN, 0.92, "uncertain"),
    (0.92 - UNCERTAIN_MARGIN - 0.001, 0.92, "not flagged"),
    (0.699, 0.95, "not flagged"),      # the "0.699 beside 0.95": not 70% fake, not flagged
    (0.45, 0.5, "uncertain"),
    (0.0, 0.05, "uncertain"),
])
def test_band_reads_a_score_against_its_threshold(score, threshold, expected):
    assert band(score, threshold) == expected


@pytest.mark.parametrize("score, threshold", [(None, 0.9), (0.9, None), (None, None)])
def test_no_score_or_no_threshold_has_no_band(score, threshold):
    assert band(score, threshold) is None
    assert band_text(score, threshold) is None


def test_band_text_names_threshold_and_the_fpr_measured_there():
    measured = measured_fpr(evaluation(0.919, 5 / 270), 0.919)
    assert band_text(0.95, 0.919, measured) == "flagged at threshold 0.92 (FPR 1.9% on 270 real files of fairface_eval.csv)"
    assert band_text(0.85, 0.919) == "uncertain: just below threshold 0.92"
    assert band_text(0.2, 0.919) == "not flagged at threshold 0.92"


def test_an_evaluation_at_another_threshold_gives_no_fpr():
    assert measured_fpr(evaluation(0.5, 0.1), 0.919) is None
    assert measured_fpr(evaluation(0.919, None), 0.919) is None  # no real files scored there
    assert measured_fpr(None, 0.919) is None
    assert measured_fpr(evaluation(0.919, 0.1), None) is None


def payload(score: float | None, status: str = "ok", threshold: float = 0.919) -> dict:
    return {
        "video": {"path": "clip.mp4", "sha256": "ab" * 32, "width": 640, "height": 360, "fps": 25.0, "frames": 50,
                  "duration_s": 2.0, "codec": "h264"},
        "tracks": [], "frames_analysed": [0, 12],
        "detectors": {"det-a": {"status": status, "score": score, "reason": None if status == "ok" else "not installed",
                                "frames_used": [0, 12], "threshold": threshold, "rule": None, "upstream": None}},
        "ensemble": {"rule": "mean", "score": score, "status": status, "threshold": threshold, "left_out": {}},
    }


def test_cli_text_prints_band_threshold_and_fpr_beside_each_score():
    text = render_text(payload(0.95), {"det-a": evaluation(0.919, 5 / 270)})
    lines = text.splitlines()
    score_line = next(i for i, line in enumerate(lines) if line.startswith("det-a"))
    assert "0.950" in lines[score_line]
    assert lines[score_line + 1].strip() == "flagged at threshold 0.92 (FPR 1.9% on 270 real files of fairface_eval.csv)"
    ensemble_line = next(i for i, line in enumerate(lines) if line.startswith("ensemble (mean)"))
    assert lines[ensemble_line + 1].strip() == "flagged at threshold 0.92"  # no ensemble evaluation: no FPR
    assert "not flagged at threshold 0.92" in render_text(payload(0.3))


def test_cli_text_bands_no_failure():
    text = render_text(payload(None, status="unavailable"))
    assert "UNAVAILABLE" in text
    assert "flagged" not in text and "uncertain" not in text


def _review(score: float | None, status: str, threshold: float | None) -> ReviewData:
    view = DetectorView("det-a", "1", status, score, None if status == "ok" else "not installed", threshold, None,
                        [0], "cd" * 32, "2024-01-01T00:00:00Z", 1)
    return ReviewData("ab" * 32, {"fps": 25, "frames": 50}, 1, [0], {}, {"det-a": view},
                      ensemble={"rule": "mean", "status": status, "score": score, "threshold": threshold,
                                "members": {"det-a": 1}, "left_out": {}})


def test_report_table_shows_the_band_first_and_the_fpr():
    html, _ = _detector_section(_review(0.85, "ok", 0.919), {}, {"det-a": evaluation(0.919, 0.019, 270, "<b>x</b>.csv")})
    header = html[html.index("<thead>"):html.index("</thead>")]
    assert header.index("Band at the operating threshold") < header.index("Video score")
    assert "uncertain: just below threshold 0.92" in html
    assert "Ensemble score" in html and html.count("uncertain: just below threshold 0.92") == 2
    flagged, _ = _detector_section(_review(0.95, "ok", 0.919), {}, {"det-a": evaluation(0.919, 0.019, 270, "<b>x</b>.csv")})
    assert "flagged at threshold 0.92 (FPR 1.9% on 270 real files of &lt;b&gt;x&lt;/b&gt;.csv)" in flagged
    assert "<b>x</b>" not in flagged  # a data set name from a user's file is escaped


def test_report_table_bands_no_failure():
    html, _ = _detector_section(_review(None, "unavailable", 0.919), {})
    row = html[html.index("<tbody>"):html.index("</tbody>")]
    assert "no score" in row and "flagged" not in row and "uncertain" not in row
    ensemble = html[html.index("<h4>Ensemble</h4>"):]
    assert "flagged" not in ensemble and "uncertain" not in ensemble

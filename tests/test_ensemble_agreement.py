"""One ensemble, stored: the CLI's JSON, the Review page and the HTML report show the same ensemble score, rule, threshold and crossing frames."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench import report, review
from workbench.cli import main
from workbench.store import Store

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")


@pytest.fixture
def analysed(two_face_clip, tiny_detectors, tmp_path, monkeypatch):
    """The two-face clip analysed from the command line by two detectors with the `max` ensemble."""
    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    path, _ = two_face_clip
    out = tmp_path / "result.json"
    assert main(["analyze", str(path), "--detector", "tiny-test", "--detector", "tiny-even", "--sample-fps", "5",
                 "--ensemble", "max", "--json", str(out), "--quiet", "--case", "agreement"]) == 0
    doc = json.loads(out.read_text())
    store = Store(home / "workbench.db")
    yield {"doc": doc, "store": store, "home": home, "sha256": doc["video"]["sha256"],
           "case_id": store.cases()[0]["id"]}
    store.close()


def test_the_ensemble_rule_and_threshold_are_stored(analysed):
    ens, store = analysed["doc"]["ensemble"], analysed["store"]
    assert ens["rule"] == "max" and ens["status"] == "ok" and ens["members"] == ["tiny-even", "tiny-test"]
    scores = [analysed["doc"]["detectors"][n]["score"] for n in ens["members"]]
    assert ens["score"] == pytest.approx(max(scores)) and ens["score"] > min(scores)
    thresholds = [analysed["doc"]["detectors"][n]["threshold"] for n in ens["members"]]
    assert ens["threshold"] == pytest.approx(sum(thresholds) / len(thresholds))
    stored = store.latest_ensemble(analysed["sha256"], review.load_review(store, analysed["sha256"]).face_run_id)
    assert stored["id"] == ens["ensemble_id"] and stored["rule"] == "max"
    assert stored["score"] == pytest.approx(ens["score"]) and set(stored["members"]) == set(ens["members"])
    assert store.verify_history()["ok"]


def test_json_review_and_report_agree_on_score_and_crossings(analysed):
    doc, store = analysed["doc"], analysed["store"]
    data = review.load_review(store, analysed["sha256"])
    assert review.headline_series(data) == review.ENSEMBLE
    threshold = review.threshold_for(data, review.ENSEMBLE)
    assert threshold == pytest.approx(doc["ensemble"]["threshold"])
    crossings = review.crossings(data, review.ENSEMBLE, threshold)
    assert crossings == doc["ensemble"]["frame_crossings"] and len(crossings) >= 2
    assert data.ensemble["score"] == pytest.approx(doc["ensemble"]["score"])

    html = report.case_report(store, analysed["case_id"], max_key_frames=100, with_heatmaps=False)
    section = html[html.index("<h4>Ensemble</h4>"):]
    assert f"{doc['ensemble']['score']:.3f}" in section[:2000]
    assert "highest video score" in section[:2000]
    keys = report.pick_key_frames(data, 100)
    assert sorted(k.frame for k in keys if any("threshold crossing" in r for r in k.reasons)) == crossings


def test_the_review_page_shows_the_same_ensemble_and_steps_through_the_same_crossings(analysed):
    doc = analysed["doc"]
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update({"case": str(analysed["case_id"]), "evidence": analysed["sha256"], "frame": "0"})
    at.run()
    assert not at.exception, at.exception
    captions = [c.value for c in at.caption if c.value.startswith("Ensemble (")]
    assert len(captions) == 1 and f"{doc['ensemble']['score']:.3f}" in captions[0], captions
    assert "highest video score" in captions[0]
    visited = []
    for _ in range(len(doc["ensemble"]["frame_crossings"]) + 1):
        button = next(b for b in at.button if b.label == "crossing ▶")
        if button.disabled:
            break
        button.click().run()
        assert not at.exception, at.exception
        frame = next(int(m.group(1)) for el in at.get("image") for c in el.captions
                     if (m := re.match(r"frame (\d+) ·", c)))
        if visited and frame == visited[-1]:
            break  # past the last crossing the button leaves the frame where it is
        visited.append(frame)
    assert visited == [f for f in doc["ensemble"]["frame_crossings"] if f > 0]

"""The demo teaches: `make run`'s one-time pre-analysis, the known swapped segment on the timeline, the start-here box."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench import cases, cli, demo, review
from workbench.evidence import ingest
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.store import Store

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
SWAP = (10, 19)  # frames of the swapped second in swap_home's clip (1.0 s to 2.0 s at 10 fps)


@pytest.fixture(scope="module")
def swapped_clip(tmp_path_factory):
    """A 3-s, 10-fps clip with a known swap from 1.0 s to 2.0 s, and its truth beside it."""
    path = tmp_path_factory.mktemp("swapclip") / "demo.mp4"
    truth = demo.make_clip(path, demo.demo_faces(), seconds=3.0, fps=10, width=320, height=180, gop=30,
                           swap=(1.0, 2.0), swap_target=demo.DEMO_SWAP_TARGET, swap_donor=demo.DEMO_SWAP_DONOR)
    assert truth.swap_frames == SWAP
    return path


@pytest.fixture
def swap_home(tmp_path, monkeypatch, swapped_clip):
    """A fresh WORKBENCH_HOME whose demo clip (under demo/) has a swapped segment inside it."""
    home = tmp_path / "home"
    (home / "demo").mkdir(parents=True)
    for src in (swapped_clip, demo.truth_path(swapped_clip)):
        (home / "demo" / src.name).write_bytes(src.read_bytes())
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home


def _analyses(home) -> list[dict]:
    store = Store(home / "workbench.db")
    try:
        (case,) = store.cases()
        return [a for e in store.case_evidence(case["id"]) for a in store.analyses(e["sha256"])]
    finally:
        store.close()


# -- the pre-analysis `make run` does ---------------------------------------------------------------
def test_demo_analyse_creates_and_analyses_the_demo_case_once(app_home, capsys):
    clip = app_home / "demo" / "demo.mp4"
    assert cli.main(["demo", "--if-missing", "--analyse", "--out", str(clip)]) == 0
    first = _analyses(app_home)
    assert [a["detector"] for a in first] == ["sbi-mobilenetv2"]  # the reference (default) detector
    assert first[0]["status"] == "ok" and first[0]["actor"] == cases.DEMO_SETUP_ACTOR
    assert ": analysed in " in capsys.readouterr().err

    assert cli.main(["demo", "--if-missing", "--analyse", "--out", str(clip)]) == 0
    assert ": already analysed" in capsys.readouterr().err
    assert [a["id"] for a in _analyses(app_home)] == [a["id"] for a in first]  # nothing ran again


def test_demo_analyse_leaves_a_file_the_analyst_already_queued_or_analysed(app_home, tiny_detectors):
    store = Store(app_home / "workbench.db")
    try:
        case_id = cases.ensure_demo_case(store, app_home / "evidence", app_home / "demo" / "demo.mp4")
        sha = store.case_evidence(case_id)[0]["sha256"]
        store.add_job(sha, ["tiny-test"], {}, "mean", "analyst", case_id)
        assert [i["done"] for i in cases.analyse_demo(store, case_id, ["tiny-test"])] == ["queued elsewhere"]
        assert store.analyses(sha) == []
    finally:
        store.close()


def test_demo_analyse_does_nothing_in_a_store_with_cases_of_its_own(app_home, capsys):
    store = Store(app_home / "workbench.db")
    try:
        store.create_case("Mine", actor="analyst")
    finally:
        store.close()
    assert cli.main(["demo", "--if-missing", "--analyse", "--out", str(app_home / "demo" / "demo.mp4")]) == 0
    assert "nothing analysed" in capsys.readouterr().err
    store = Store(app_home / "workbench.db")
    try:
        assert [c["name"] for c in store.cases()] == ["Mine"]
    finally:
        store.close()


# -- the ground truth, by sha256 -----------------------------------------------------------------------
def test_truth_is_recorded_for_the_demo_evidence_only(swap_home, tmp_path, h264_clip):
    store = Store(swap_home / "workbench.db")
    try:
        case_id = cases.ensure_demo_case(store, swap_home / "evidence", swap_home / "demo" / "demo.mp4")
        sha = store.case_evidence(case_id)[0]["sha256"]
        assert cases.demo_truth(store, sha) == SWAP
        assert not cases.record_demo_truth(store, sha, swap_home / "demo" / "demo.mp4")  # once only
        # A user's file with a truth JSON beside it gets no band: the truth is never read from a user path.
        user = tmp_path / "user.mp4"
        user.write_bytes(h264_clip.read_bytes())
        demo.truth_path(user).write_text(json.dumps({"swap_frames": [0, 5]}))
        other = ingest(store, user, "user.mp4", swap_home / "evidence", "analyst", case_id)["sha256"]
        assert cases.demo_truth(store, other) is None
        assert not cases.record_demo_truth(store, other, swap_home / "demo" / "demo.mp4")  # not that clip's hash
        assert cases.demo_truth(store, other) is None
        assert store.verify_history()["ok"]  # the truth entry is part of the hash chain like any other
    finally:
        store.close()


def test_add_ground_truth_shades_the_range_with_its_label():
    fig = review.add_ground_truth(review.go.Figure(), (100, 174))
    (shape,) = fig.layout.shapes
    assert (shape.x0, shape.x1) == (99.5, 174.5)
    assert [a.text for a in fig.layout.annotations] == [review.GROUND_TRUTH_LABEL]
    assert review.add_ground_truth(review.go.Figure(), None).layout.shapes == ()


def _timeline_spec(at: AppTest) -> dict:
    chart = next(el for el in at.get("plotly_chart") if el.key == "timeline")
    return json.loads(chart.proto.spec)


def test_the_pre_analysed_demo_opens_on_results_with_the_truth_band(swap_home, tiny_detectors):
    store = Store(swap_home / "workbench.db")
    try:
        case_id = cases.ensure_demo_case(store, swap_home / "evidence", swap_home / "demo" / "demo.mp4")
        (item,) = cases.analyse_demo(store, case_id, ["tiny-test"])
        assert item["done"] == "analysed"
    finally:
        store.close()
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    assert [m.label for m in at.metric] and "tiny-test" in at.metric[0].label  # results on the first screen
    layout = _timeline_spec(at)["layout"]
    bands = [s for s in layout["shapes"] if s.get("x0") == SWAP[0] - 0.5 and s.get("x1") == SWAP[1] + 0.5]
    assert len(bands) == 1
    assert review.GROUND_TRUTH_LABEL in [a.get("text") for a in layout["annotations"]]


def test_a_file_without_recorded_truth_has_no_truth_band(swap_home, tiny_detectors):
    store = Store(swap_home / "workbench.db")
    try:
        case_id = store.create_case("Own case", actor="analyst")
        row = ingest(store, swap_home / "demo" / "demo.mp4", "copy.mp4", swap_home / "evidence", "analyst", case_id)
        analyse_evidence(store, row["sha256"], ["tiny-test"], Sampling(sample_fps=5), actor="analyst")
    finally:
        store.close()
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    layout = _timeline_spec(at)["layout"]
    assert review.GROUND_TRUTH_LABEL not in [a.get("text") for a in layout["annotations"]]


# -- the start-here box --------------------------------------------------------------------------------
def _start_box_shown(at: AppTest) -> bool:
    return any(m.value.startswith("**Start here**") for m in at.markdown)


def test_start_box_shows_on_first_launch_and_stays_dismissed(app_home):
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    assert _start_box_shown(at)
    next(b for b in at.button if b.label == "Got it, hide this").click().run()
    assert not at.exception, at.exception
    assert not _start_box_shown(at)
    again = AppTest.from_file(APP, default_timeout=120).run()  # a new session: the dismissal was remembered
    assert not _start_box_shown(again)


def test_start_box_goes_once_the_analyst_has_a_case_of_their_own(app_home):
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert _start_box_shown(at)
    store = Store(app_home / "workbench.db")
    try:
        store.create_case("Mine", actor="analyst")
    finally:
        store.close()
    assert not _start_box_shown(AppTest.from_file(APP, default_timeout=120).run())

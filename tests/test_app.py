"""Every page of the Streamlit app through AppTest (no browser)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from detectors.base import SCOPE_CAVEAT
from workbench import jobs
from workbench.store import Store

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
PAGES = ["views/review.py", "views/cases.py", "views/notes.py", "views/detectors.py", "views/about.py"]
PAYLOAD = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def start(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def all_text(at: AppTest) -> str:
    parts = []
    for kind in ("text", "caption", "markdown", "warning", "info", "title", "subheader", "metric"):
        for el in at.get(kind):
            parts.append(str(getattr(el, "value", "")) + " " + str(getattr(el, "label", "")))
    for el in at.sidebar.get("caption"):
        parts.append(el.value)
    return "\n".join(parts)


def image_captions(at: AppTest) -> list[str]:
    return [c for el in at.get("image") for c in el.captions]


@pytest.fixture
def analysed_home(app_home, tiny_detectors):
    """The demo case, scored by the tiny detector, so every page has results to put the caveat beside."""
    from workbench.cases import ensure_demo_case
    from workbench.pipeline import Sampling
    from workbench.service import analyse_evidence

    store = Store(app_home / "workbench.db")
    try:
        case_id = ensure_demo_case(store, app_home / "evidence", app_home / "demo" / "demo.mp4")
        sha = store.case_evidence(case_id)[0]["sha256"]
        analyse_evidence(store, sha, ["tiny-test"], Sampling(sample_fps=2))
    finally:
        store.close()
    return app_home


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_the_caveat_in_its_own_body(analysed_home, page):
    at = start(page)
    body = [w for w in at.main.warning]
    assert any(SCOPE_CAVEAT == w.value for w in body), (page, [w.value for w in body])


def test_fresh_install_opens_on_the_demo_case(app_home):
    at = start()
    assert at.title[0].value == "Review"
    store = Store(app_home / "workbench.db")
    (case,) = store.cases()
    assert case["name"].startswith("Demo")
    assert len(store.case_evidence(case["id"])) == 1
    assert any(c.startswith("frame 0 ·") for c in image_captions(at))


def test_scrubber_moves_frame_by_frame(app_home):
    at = start()
    plus = next(b for b in at.button if b.label == "+1 frame")
    plus.click().run()
    assert at.slider(key="frame_slider").value == 1
    at.slider(key="frame_slider").set_value(30).run()
    assert at.slider(key="frame_slider").value == 30
    next(b for b in at.button if b.label == "−1 s").click().run()
    assert at.slider(key="frame_slider").value == 5
    at.number_input(key="time_s").set_value(1.2).run()
    assert at.slider(key="frame_slider").value == 30
    assert not at.exception


def test_run_detectors_from_the_page(app_home, tiny_detectors):
    at = start()
    at.multiselect[0].set_value(["tiny-test"]).run()
    next(b for b in at.button if b.label == "Run").click().run()
    assert "Not recorded. Type your name" in "\n".join(e.value for e in at.error)  # no job without a name
    assert jobs.run_queued(app_home / "workbench.db") == []
    at.sidebar.text_input(key="analyst").set_value("ana").run()
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    # The page queued a job; run it here as a worker would, then the page shows the stored result.
    assert jobs.run_queued(app_home / "workbench.db") == [1]
    at.run()
    store = Store(app_home / "workbench.db")
    (analysis,) = store.db["analyses"].rows
    assert analysis["detector"] == "tiny-test" and analysis["actor"]
    metrics = {m.label: m.value for m in at.metric}
    assert any("tiny-test" in label for label in metrics)
    assert [el.key for el in at.get("plotly_chart")].count("timeline") == 1  # plus the score histogram
    assert "face-swap detector" in all_text(at).lower()
    # Grad-CAM on demand, for the selected face.
    next(b for b in at.button if b.label == "Explain this face").click().run()
    assert not at.exception, at.exception
    captions = " ".join(image_captions(at))
    assert "Grad-CAM" in captions and "exact input the model saw" in captions


def test_note_saved_through_the_page_has_author_and_time(app_home):
    at = start("views/notes.py")
    at.sidebar.text_input(key="analyst").set_value("ana").run()
    at.text_area[0].input("Blend seam near the jaw " + PAYLOAD)
    at.button[0].click().run()  # the form's submit button comes first
    assert not at.exception, at.exception
    store = Store(app_home / "workbench.db")
    (note,) = store.notes(store.cases()[0]["id"])
    assert note["author"] == "ana" and note["created_at"].endswith("Z") and note["frame"] == 0
    assert PAYLOAD in note["text"]
    shown = [t.value for t in at.text]
    assert any(PAYLOAD in t for t in shown), "the note is shown verbatim, as text"
    assert not any(PAYLOAD in m.value for m in at.markdown), "user text never goes through markdown/HTML"


def test_verdict_history_keeps_old_versions(app_home):
    at = start("views/notes.py")
    at.sidebar.text_input(key="analyst").set_value("ana").run()  # no write without a name
    for verdict, reason in [("inconclusive", "first look"), ("likely manipulated", PAYLOAD)]:
        at.radio[0].set_value(verdict)
        at.text_area[1].input(reason)
        next(c for c in at.checkbox if c.label.startswith("I understand")).check()  # verdicts are permanent: confirmed each time
        next(b for b in at.button if b.label == "Record verdict").click().run()
        assert not at.exception, at.exception
    store = Store(app_home / "workbench.db")
    history = store.verdicts(store.cases()[0]["id"])
    assert [v["verdict"] for v in history] == ["likely manipulated", "inconclusive"]
    table = at.dataframe[0].value
    assert list(table["verdict"]) == ["likely manipulated", "inconclusive"]
    assert PAYLOAD in list(table["reason"])


def test_html_in_evidence_name_is_shown_as_text(app_home, two_face_clip):
    from workbench.evidence import ingest

    at = start()
    store = Store(app_home / "workbench.db")
    case_id = store.cases()[0]["id"]
    ingest(store, two_face_clip[0], PAYLOAD + ".mp4", app_home / "evidence", case_id=case_id)
    at.switch_page("views/cases.py").run()
    assert not at.exception
    # The table clips long names; the full name is plain text once the file is picked below it.
    assert "<script>alert(1)</scrip…(2)>.mp4" in list(at.dataframe[0].value["file (client name)"])
    picker = next(s for s in at.selectbox if s.label == "Review evidence")
    picker.set_value(next(o for o in picker.options if o.startswith(PAYLOAD))).run()
    assert f"file {PAYLOAD}.mp4" in [t.value for t in at.text]
    assert not any(PAYLOAD in m.value for m in at.markdown)

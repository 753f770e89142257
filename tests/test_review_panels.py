"""The Review page's panels through AppTest: Grad-CAM while scrubbing, its opacity, PNG export, time ranges, the filmstrip."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers import labelled, press
from workbench.export import EXPORT_ACTION
from workbench.store import Store

APP = str(Path(__file__).resolve().parent.parent / "workbench" / "ui" / "app.py")
TIMEOUT_S = 180  # generous: the machine running the suite may be loaded


@pytest.fixture
def analysed(app_home, tiny_detectors):
    """The demo case scored by the tiny detector; the analysed frames that show a face, in order."""
    from workbench import review
    from workbench.cases import ensure_demo_case
    from workbench.pipeline import Sampling
    from workbench.service import analyse_evidence

    store = Store(app_home / "workbench.db")
    try:
        case_id = ensure_demo_case(store, app_home / "evidence", app_home / "demo" / "demo.mp4")
        sha = store.case_evidence(case_id)[0]["sha256"]
        analyse_evidence(store, sha, ["tiny-test"], Sampling(sample_fps=2))
        data = review.load_review(store, sha)
    finally:
        store.close()
    with_face = [f for f in data.frames_analysed if review.faces_at(data, f)]
    assert len(with_face) >= 2, data.frames_analysed
    return {"home": app_home, "case": case_id, "sha": sha, "faces": with_face, "fps": data.fps,
            "analysed": data.frames_analysed}


def start(name: str | None = "ana") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    if name:
        at.sidebar.text_input(key="analyst").set_value(name).run()
    assert not at.exception, at.exception
    return at


def seek(at: AppTest, frame: int) -> AppTest:
    labelled(at.slider, "Frame").set_value(frame).run()
    assert not at.exception, at.exception
    return at


def image_by_caption(at: AppTest, pattern: str):
    """(url, caption) of the first image whose caption matches."""
    for el in at.get("image"):
        for url, caption in zip(el.value, el.captions):
            if re.search(pattern, caption):
                return url, caption
    return None


def timeline_labels(at: AppTest) -> list[str]:
    """The annotation texts of the score timeline (the shaded ranges' labels among them)."""
    chart = next(el for el in at.get("plotly_chart") if el.key == "timeline")
    return [a.get("text", "") for a in json.loads(chart.proto.spec)["layout"].get("annotations", [])]


def frame_caption(at: AppTest) -> int | None:
    found = image_by_caption(at, r"^frame \d+ ·")
    return int(re.match(r"frame (\d+)", found[1]).group(1)) if found else None


def test_explain_while_scrubbing_draws_each_frames_heatmap_without_a_click(analysed):
    first, second = analysed["faces"][:2]
    at = seek(start(), first)
    assert image_by_caption(at, r"^Grad-CAM") is None  # off: nothing computed until asked
    labelled(at.toggle, "Explain while scrubbing").set_value(True).run()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.label == "Explain this face"]  # nothing to click while live
    shown = image_by_caption(at, r"^Grad-CAM · frame \d+")
    assert shown and f"Grad-CAM · frame {first} ·" in shown[1], shown
    seek(at, second)  # only the frame changes: no button is pressed
    moved = image_by_caption(at, r"^Grad-CAM · frame \d+")
    assert moved and f"Grad-CAM · frame {second} ·" in moved[1], moved
    assert moved[0] != shown[0]  # a new heatmap image, not the last one again
    captions = [c for el in at.get("image") for c in el.captions]
    assert any(c.startswith("colour scale: 0 (blue)") for c in captions), captions
    assert any(c.startswith("exact input the model saw") for c in captions)
    assert any(c.startswith("in place on the frame") for c in captions)


def test_the_opacity_slider_changes_the_overlays_pixels_not_the_model_input(analysed):
    at = seek(start(), analysed["faces"][0])
    labelled(at.toggle, "Explain while scrubbing").set_value(True).run()
    before = {k: image_by_caption(at, p)[0] for k, p in
              (("input", r"^exact input"), ("overlay", r"^Grad-CAM ·"), ("placed", r"^in place"))}
    labelled(at.slider, "Heatmap opacity").set_value(0.9).run()
    assert not at.exception, at.exception
    after = {k: image_by_caption(at, p)[0] for k, p in
             (("input", r"^exact input"), ("overlay", r"^Grad-CAM ·"), ("placed", r"^in place"))}
    # Streamlit names a media file by its bytes: a new URL is new pixels.
    assert after["overlay"] != before["overlay"] and after["placed"] != before["placed"]
    assert after["input"] == before["input"]


def _exports(home) -> list[dict]:
    store = Store(home / "workbench.db")
    try:
        return [e for e in store.audit_log() if e["action"] == EXPORT_ACTION]
    finally:
        store.close()


def test_export_is_refused_without_a_name_and_audited_with_it(analysed):
    frame = analysed["faces"][0]
    at = seek(start(name=None), frame)
    press(at, "Export frame + faces as PNG")
    assert any("Not recorded. Type your name" in e.value for e in at.error), [e.value for e in at.error]
    assert not at.get("download_button") and _exports(analysed["home"]) == []
    at.sidebar.text_input(key="analyst").set_value("ana").run()
    press(at, "Export frame + faces as PNG")
    buttons = at.get("download_button")
    labels = [b.label for b in buttons]
    assert labels[0] == "Download frame PNG" and all(re.fullmatch(r"Download T\d+ crop PNG", x) for x in labels[1:])
    assert len(labels) >= 2, labels  # the frame and at least one face
    stem = f"{analysed['sha'][:12]}-frame{frame:06d}"
    (entry,) = _exports(analysed["home"])
    assert entry["actor"] == "ana" and entry["details"]["frame"] == frame
    assert entry["subject"] == f"evidence:{analysed['sha']}"
    names = [f["name"] for f in entry["details"]["files"]]
    assert names[0] == f"{stem}.png" and names[1:] == [f"{stem}-track{x.split()[1][1:]}.png" for x in labels[1:]]
    assert any(stem in c.value for c in at.caption)


def test_a_marked_range_is_shaded_pinned_to_a_note_listed_and_jumped_to(analysed):
    fps, first, last = analysed["fps"], 10, 30
    at = seek(start(), last)
    press(at, "Mark out")
    seek(at, first)
    press(at, "Mark in")
    span = f"frames {first}–{last} ({first / fps:.2f}–{last / fps:.2f} s)"
    assert any(span in c.value for c in at.caption), [c.value for c in at.caption]
    assert f"marked: {span}" in timeline_labels(at)
    labelled(at.text_input, f"Note on {span}").input("lips drift from the audio")
    press(at, "Save range note")
    store = Store(analysed["home"] / "workbench.db")
    try:
        (note,) = store.notes(analysed["case"])
    finally:
        store.close()
    assert (note["frame"], note["frame_end"], note["sha256"]) == (first, last, analysed["sha"])
    assert note["time_end_s"] == pytest.approx(last / fps)
    seek(at, 0)
    assert f"note {note['note_id']}: {span}" in timeline_labels(at)
    at.switch_page("views/notes.py").run()
    assert any(span in t.value for t in at.text), [t.value for t in at.text]
    press(at, "Jump to start")
    assert at.title[0].value == "Review" and frame_caption(at) == first


def test_a_refused_range_note_keeps_its_text_and_a_saved_one_empties_the_box(analysed):
    fps, first, last = analysed["fps"], 4, 9
    at = seek(start(name=None), first)
    press(at, "Mark in")
    seek(at, last)
    press(at, "Mark out")
    box = f"Note on frames {first}–{last} ({first / fps:.2f}–{last / fps:.2f} s)"
    labelled(at.text_input, box).input("jaw seam")
    press(at, "Save range note")  # no analyst name: refused, and the text stays
    assert any("Not recorded" in e.value for e in at.error), [e.value for e in at.error]
    assert labelled(at.text_input, box).value == "jaw seam"
    at.sidebar.text_input(key="analyst").set_value("ana").run()
    press(at, "Save range note")
    assert labelled(at.text_input, box).value == ""
    assert any(s.value.startswith("Note ") for s in at.success), [s.value for s in at.success]


def test_notes_page_pins_a_new_note_to_the_marked_range(analysed):
    fps = analysed["fps"]
    at = seek(start(), 5)
    press(at, "Mark in")
    seek(at, 12)
    press(at, "Mark out")
    at.switch_page("views/notes.py").run()
    pin = labelled(at.checkbox, f"Pin to frames 5–12 ({5 / fps:.2f}–{12 / fps:.2f} s)")
    assert pin.value is True
    labelled(at.text_area, "New note").input("the range")
    press(at, "Save note")
    store = Store(analysed["home"] / "workbench.db")
    try:
        (note,) = store.notes(analysed["case"])
    finally:
        store.close()
    assert (note["frame"], note["frame_end"], note["track_id"]) == (5, 12, None)


def test_filmstrip_shows_the_analysed_frames_and_a_click_seeks(analysed):
    at = start()
    assert frame_caption(at) == 0
    target = analysed["analysed"][-1]
    thumbs = [c for el in at.get("image") for c in el.captions if re.match(r"^\d+\.\d\d s · ", c)]
    assert len(thumbs) == min(12, len(analysed["analysed"])), thumbs
    at.button(key=f"film-{target}").click().run()
    assert not at.exception, at.exception
    assert frame_caption(at) == target

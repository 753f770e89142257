"""End to end in a real browser: `streamlit run` on 127.0.0.1, driven by Debian's headless Chromium.

Opens the demo case, moves the frame scrubber with the keyboard, seeks by clicking the score
timeline, plays, carries a case and frame from page to page and through a reload, and saves
screenshots to test-output/browser/. Every check waits (bounded) for what it asserts: the machine
running the suite may be busy.

Without /usr/bin/chromium (or WORKBENCH_CHROMIUM) the browser tests skip with the install hint on
a user's machine, and fail in CI (CI set): `sudo bash scripts/install-browser.sh` installs it.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from browser_support import (
    OUTPUT_DIR, REPO_ROOT, chromium_page, require_chromium, served, server_log_tail, wait_until,
)

# -- What the tests look for: update here when the UI changes. ---------------------------------
# Text shown once the demo case is open (its name; a subheader on Cases, a text line on Review).
DEMO_CASE_TEXT = "Demo: synthetic face swap"
SECOND_CASE_NAME = "Second case"
# The scrubber: a Streamlit slider with this exact label.
FRAME_SLIDER_LABEL = "Frame"
SLIDER = '[data-testid="stSlider"]'
WIDGET_LABEL = '[data-testid="stWidgetLabel"]'
# Streamlit <= 1.4x renders a baseweb div[role=slider]; 1.6x a react-aria visually hidden <input type=range>.
SLIDER_THUMB = '[role="slider"], input[type="range"]'
# The frame image: the st.image whose caption starts "frame N · ..." (face crops have other captions).
IMAGE = '[data-testid="stImage"]'
IMAGE_CAPTION = '[data-testid="stImageCaption"]'
FRAME_CAPTION_RE = re.compile(r"^\s*frame (\d+)\b")
# The plotly timeline (the fixture scores the demo clip first, so Review must draw it) and its
# clickable markers; plotly binds each marker's data point (x = frame) to the element.
TIMELINE = ".js-plotly-plot"
TIMELINE_TRACE = ".scatterlayer .trace, .barlayer .trace"
TIMELINE_POINT = ".scatterlayer .trace .points path.point"
# The Play toggle (a st.toggle: a checkbox element with a switch inside).
TOGGLE = '[data-testid="stCheckbox"]'
SELECTBOX = '[data-testid="stSelectbox"]'
TEXT = '[data-testid="stText"]'
NAV_LINK = '[data-testid="stSidebarNav"] a'
HEADING = "h1"
# Anything that means the app broke (showErrorDetails = "none" still renders stException).
APP_ERROR = '[data-testid="stException"]'
ARROW_PRESSES = 5
PLAY_STEPS = 5  # analysed frames Play must step through on its own

LOAD_TIMEOUT_MS = 45_000
STEP_TIMEOUT_S = 20.0
DEMO_SAMPLE_FPS = 5


@pytest.fixture(scope="module")
def app_home(tmp_path_factory, h264_clip):
    """A fresh WORKBENCH_HOME: the demo case (scored), and a second case with one unscored clip."""
    require_chromium()
    from workbench import demo

    home = tmp_path_factory.mktemp("browser") / "home"
    (home / "demo").mkdir(parents=True)
    demo.make_demo(home / "demo" / "demo.mp4", seconds=2.0, width=640, height=360)
    facts = _analyse_demo_case(home)
    facts.update(_second_case(home, h264_clip))
    return home, facts


@pytest.fixture(scope="module")
def app_url(app_home):
    """`streamlit run` serving the app on app_home (one server for the module; one session per test)."""
    home, _ = app_home
    with served(home, OUTPUT_DIR / "streamlit.log") as url:
        yield url


def _analyse_demo_case(home) -> dict:
    """Create the demo case as the app would, and score it with the reference detector."""
    from detectors.registry import default_detectors
    from workbench import review
    from workbench.cases import ensure_demo_case
    from workbench.pipeline import Sampling
    from workbench.service import analyse_evidence
    from workbench.store import Store

    store = Store(home / "workbench.db")
    try:
        case_id = ensure_demo_case(store, home / "evidence", home / "demo" / "demo.mp4")
        evidence = store.case_evidence(case_id)[0]
        analyse_evidence(store, evidence["sha256"], default_detectors(), Sampling(sample_fps=DEMO_SAMPLE_FPS))
        analysed = review.load_review(store, evidence["sha256"]).frames_analysed
    finally:
        store.close()
    return {"demo_case": case_id, "demo_sha256": evidence["sha256"], "demo_analysed": analysed}


def _second_case(home, clip) -> dict:
    from workbench.evidence import ingest
    from workbench.store import Store

    store = Store(home / "workbench.db")
    try:
        case_id = store.create_case(SECOND_CASE_NAME, "for the page-to-page flow", actor="test")
        evidence = ingest(store, clip, "interview.mp4", home / "evidence", "test", case_id)
    finally:
        store.close()
    return {"second_case": case_id, "second_sha256": evidence["sha256"], "second_frames": evidence["probe"]["frames"]}


@pytest.fixture
def page():
    with chromium_page({"width": 1280, "height": 1600}, LOAD_TIMEOUT_MS) as pg:
        yield pg


def log() -> str:
    return server_log_tail(OUTPUT_DIR / "streamlit.log")


def _slider_value(thumb) -> int:
    """aria-valuenow where the slider has it (baseweb), else the range input's value (react-aria)."""
    return int(thumb.evaluate("e => e.getAttribute('aria-valuenow') ?? e.value ?? e.getAttribute('aria-valuetext')"))


def _frame_caption(frame_image) -> int | None:
    texts = frame_image.locator(IMAGE_CAPTION).all_inner_texts()
    m = FRAME_CAPTION_RE.match(texts[0]) if texts else None
    return int(m.group(1)) if m else None


def _image_state(img) -> dict:
    return img.evaluate("e => ({src: e.currentSrc || e.src, loaded: e.complete && e.naturalWidth > 0,"
                        " w: e.naturalWidth, h: e.naturalHeight})")


def _assert_no_app_error(pg) -> None:
    errors = pg.locator(APP_ERROR)
    assert errors.count() == 0, f"the app shows an error: {errors.first.inner_text()!r}\nserver log:\n{log()}"


def _wait_until(pg, condition, what, shot: str, timeout_s: float = STEP_TIMEOUT_S):
    """Poll condition() (bounded); fail with a screenshot and the server log. `what` may be a function."""
    return wait_until(pg, condition, what, shot, OUTPUT_DIR / "streamlit.log", timeout_s)


def go_to_page(pg, link: str, title: str, shot: str, attempts: int = 3) -> None:
    """Click a sidebar link until the page's title shows (bounded): on a loaded machine a click that
    lands while the previous page is still rerunning can be dropped by the frontend."""
    heading = pg.locator(HEADING).filter(has_text=title).first
    for attempt in range(attempts):
        pg.locator(NAV_LINK).filter(has_text=link).first.click()
        try:
            heading.wait_for(state="visible", timeout=STEP_TIMEOUT_S * 1000)
            return
        except Exception:
            if attempt == attempts - 1:
                pg.screenshot(path=OUTPUT_DIR / shot, full_page=True)
                raise AssertionError(f"the {title} page did not open after {attempts} clicks on {link!r} "
                                     f"(see {OUTPUT_DIR / shot})\nserver log:\n{log()}") from None


class Review:
    """The Review page's scrubber, frame image and timeline, located once."""

    def __init__(self, pg):
        self.page = pg
        slider = pg.locator(SLIDER).filter(has=pg.locator(WIDGET_LABEL).get_by_text(FRAME_SLIDER_LABEL, exact=True))
        self.thumb = slider.locator(SLIDER_THUMB).first
        self.frame_image = pg.locator(IMAGE).filter(
            has=pg.locator(IMAGE_CAPTION).filter(has_text=FRAME_CAPTION_RE)).first
        self.img = self.frame_image.locator("img").first

    def wait_loaded(self, shot: str = "failed-load.png") -> None:
        try:
            self.thumb.wait_for(state="attached")  # the react-aria input is visually hidden on purpose
            self.img.wait_for(state="visible")
            self.page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=self.img.element_handle())
        except Exception:
            self.page.screenshot(path=OUTPUT_DIR / shot, full_page=True)
            raise AssertionError(f"the Review page did not render (see {OUTPUT_DIR / shot})\n"
                                 f"server log:\n{log()}") from None
        _assert_no_app_error(self.page)

    def frame(self) -> int | None:
        return _frame_caption(self.frame_image)


def _open(pg, url: str) -> Review:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    pg.goto(url, wait_until="domcontentloaded")
    review = Review(pg)
    review.wait_loaded()
    return review


def _timeline(pg):
    """The plotly timeline, once it has drawn its SVG with at least one trace (waits, bounded)."""
    chart = pg.locator(TIMELINE).first
    try:
        chart.locator(".main-svg").first.wait_for(state="visible")
        chart.locator(TIMELINE_TRACE).first.wait_for(state="attached")
    except Exception:
        pg.screenshot(path=OUTPUT_DIR / "failed-timeline.png", full_page=True)
        raise AssertionError(f"the score timeline did not draw a trace (see {OUTPUT_DIR}/failed-timeline.png)\n"
                             f"server log:\n{log()}") from None
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 80, box
    return chart


def _screenshot(pg, element, name: str) -> None:
    """Streamlit scrolls inside its main container, so full_page captures only the viewport:
    a tall viewport, scrolled to the element, shows the scrubber and the frame together."""
    element.scroll_into_view_if_needed()
    pg.screenshot(path=OUTPUT_DIR / name)


@pytest.mark.browser
def test_demo_case_scrubs_in_a_real_browser(app_url, page):
    started = time.monotonic()
    review = _open(page, app_url)
    page.get_by_text(DEMO_CASE_TEXT).first.wait_for(state="visible")
    before = _image_state(review.img)
    start_value = _slider_value(review.thumb)
    assert review.frame() == start_value
    assert before["w"] == 640 and before["h"] == 360, before
    _timeline(page)
    _screenshot(page, review.frame_image, "01-loaded.png")

    # Move the scrubber: focus the thumb and press ArrowRight, one step at a time (each step reruns
    # the scrubber fragment; a press while it re-renders could be lost, as it could for a person).
    value, caption, after = start_value, None, before
    for step in range(1, ARROW_PRESSES + 1):
        review.thumb.focus()
        page.keyboard.press("ArrowRight")

        def moved():
            nonlocal value, caption, after
            value, caption, after = _slider_value(review.thumb), review.frame(), _image_state(review.img)
            return value == start_value + step and caption == value and after["loaded"]

        _wait_until(page, moved, lambda: f"scrubbing did not re-render the frame: slider {start_value}->{value}, "
                    f"caption {caption}, image {before['src']} -> {after}", "failed-scrub.png")
    assert after["src"] != before["src"]
    assert value == start_value + ARROW_PRESSES, (start_value, value)
    _assert_no_app_error(page)
    _timeline(page)
    _screenshot(page, review.frame_image, "02-scrubbed.png")
    print(f"\nbrowser test: frame {start_value} -> {value}, page part {time.monotonic() - started:.1f} s")


@pytest.mark.browser
def test_clicking_a_timeline_point_seeks_to_its_frame(app_url, page):
    review = _open(page, app_url)
    start_frame = review.frame()
    chart = _timeline(page)
    points = chart.locator(TIMELINE_POINT)
    _wait_until(page, lambda: points.count() > 3, "the timeline has no markers to click", "failed-timeline.png")
    # A marker well away from the current frame, so the seek is visible.
    frames = points.evaluate_all("els => els.map(e => (e.__data__ && typeof e.__data__.x === 'number') ? e.__data__.x : null)")
    index, target = next((i, int(x)) for i, x in enumerate(frames) if x is not None and abs(x - start_frame) >= 10)
    point = points.nth(index)
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*centre)  # plotly picks the clicked point from its hover state
    page.mouse.click(*centre)
    _wait_until(page, lambda: review.frame() == target and _slider_value(review.thumb) == target,
                lambda: f"clicking the timeline point at frame {target} did not seek (caption {review.frame()})",
                "failed-timeline-click.png")
    _assert_no_app_error(page)
    assert re.search(rf"[?&]frame={target}\b", page.url), page.url
    _screenshot(page, review.frame_image, "03-timeline-click.png")


@pytest.mark.browser
def test_play_steps_through_the_analysed_frames_on_its_own(app_url, page, app_home):
    analysed = app_home[1]["demo_analysed"]
    review = _open(page, app_url)
    start_frame = review.frame()
    assert start_frame == analysed[0], (start_frame, analysed[:3])
    goal = analysed[PLAY_STEPS]
    toggle = page.locator(TOGGLE).filter(has_text="Play").first
    toggle.locator("label").first.click()
    seen: list[int | None] = []

    def advanced():
        seen.append(review.frame())
        return seen[-1] is not None and seen[-1] >= goal

    # Bounded for a loaded machine; it plays about 2.5 analysed frames a second when idle.
    _wait_until(page, advanced, lambda: f"Play did not step {PLAY_STEPS} analysed frames on its own "
                f"({start_frame} -> {seen[-1] if seen else None}, goal {goal})", "failed-play.png")
    distinct = sorted({f for f in seen if f is not None})
    assert len(distinct) >= 2, distinct
    toggle.locator("label").first.click()  # stop
    _assert_no_app_error(page)
    print(f"\nplay: frames seen {distinct}")


@pytest.mark.browser
def test_case_and_frame_carry_from_page_to_page_and_through_a_reload(app_url, page, app_home):
    home, facts = app_home
    last_frame = facts["second_frames"] - 1
    _open(page, app_url)
    # Cases: pick the second case, as an analyst does.
    go_to_page(page, "Cases", "Cases", "failed-flow-cases.png")
    case_box = page.locator(SELECTBOX).filter(has=page.locator(WIDGET_LABEL).get_by_text("Open case", exact=True))
    case_box.first.click()
    page.get_by_role("option").filter(has_text=f"#{facts['second_case']} {SECOND_CASE_NAME}").first.click()
    page.get_by_text(f"Case #{facts['second_case']}", exact=True).wait_for(state="visible")

    # Review: the second case's file; scrub to its last frame.
    go_to_page(page, "Review", "Review", "failed-flow-review.png")
    review = Review(page)
    review.wait_loaded("failed-flow-review.png")
    page.locator(TEXT).filter(has_text=f"case #{facts['second_case']} {SECOND_CASE_NAME}").first.wait_for()
    review.thumb.focus()
    page.keyboard.press("End")
    _wait_until(page, lambda: review.frame() == last_frame, lambda: f"End did not reach frame {last_frame} ({review.frame()})",
                "failed-flow-scrub.png")

    # No write without a name: type one in the sidebar (Enter commits it); the URL keeps it.
    name_box = page.get_by_label("Analyst", exact=True)
    name_box.fill("ana")
    name_box.press("Enter")
    _wait_until(page, lambda: "analyst=ana" in page.url, lambda: f"the URL does not carry the name: {page.url}",
                "failed-flow-name.png")

    # Notes: the case, the file and the frame the analyst was looking at.
    go_to_page(page, "Notes", "Notes & verdict", "failed-flow-notes.png")
    page.locator(TEXT).filter(has_text=f"Filed on case #{facts['second_case']} {SECOND_CASE_NAME}").first.wait_for()
    page.get_by_text(f"Pin to the current frame ({last_frame})").first.wait_for()
    page.get_by_label("New note").fill("flow note from the browser")
    page.get_by_role("button", name="Save note").click()
    note = _wait_until(page, lambda: _stored_note(home, "flow note from the browser"),
                       "the note was not stored", "failed-flow-note.png")
    assert (note["case_id"], note["sha256"], note["frame"]) == (facts["second_case"], facts["second_sha256"], last_frame)

    # A reload is a new session: the URL alone brings back the case, the file and the frame.
    _wait_until(page, lambda: f"case={facts['second_case']}" in page.url and f"frame={last_frame}" in page.url,
                lambda: f"the URL does not carry the case and frame: {page.url}", "failed-flow-url.png")
    go_to_page(page, "Review", "Review", "failed-flow-review2.png")
    Review(page).wait_loaded("failed-flow-review2.png")
    _wait_until(page, lambda: f"case={facts['second_case']}" in page.url and f"frame={last_frame}" in page.url,
                lambda: f"the Review page's URL does not carry the case and frame: {page.url}", "failed-flow-url2.png")
    page.reload(wait_until="domcontentloaded")
    review = Review(page)
    review.wait_loaded("failed-flow-reload.png")
    _wait_until(page, lambda: review.frame() == last_frame, f"the reload did not open frame {last_frame}",
                "failed-flow-reload.png")
    page.locator(TEXT).filter(has_text=f"case #{facts['second_case']} {SECOND_CASE_NAME}").first.wait_for()
    _wait_until(page, lambda: page.get_by_label("Analyst", exact=True).input_value() == "ana", "the reload lost the analyst's name",
                "failed-flow-reload-name.png")
    _assert_no_app_error(page)
    _screenshot(page, review.frame_image, "04-reloaded.png")


def _stored_note(home, text: str) -> dict | None:
    from workbench.store import Store

    store = Store(home / "workbench.db")
    try:
        return next((n for case in store.cases() for n in store.notes(case["id"]) if n["text"] == text), None)
    finally:
        store.close()


def test_a_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    from browser_support import require_chromium as require

    monkeypatch.setenv("WORKBENCH_CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI"):
        require()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="install-browser.sh"):
        require()


def _job_case(home, clip) -> tuple[int, str]:
    """A case with one file nobody has analysed yet (its own, so other tests' files stay unscored)."""
    from workbench.evidence import ingest
    from workbench.store import Store

    store = Store(home / "workbench.db")
    try:
        case_id = store.create_case("Job case", "an analysis started from the page", actor="test")
        evidence = ingest(store, clip, "two.mp4", home / "evidence", "test", case_id)
    finally:
        store.close()
    return case_id, evidence["sha256"]


@contextlib.contextmanager
def _worker_pool(home):
    """`python -m workbench worker --workers 1` on the app's home, as `make run` starts it; stopped with Ctrl-C."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env["WORKBENCH_HOME"] = str(home)
    with open(OUTPUT_DIR / "worker.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workbench", "worker", "--workers", "1"], cwd=REPO_ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                pytest.fail("the worker pool did not stop on SIGINT")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # nothing of the pool may outlive the test


@pytest.mark.browser
def test_an_analysis_started_in_the_app_survives_a_reload_and_its_result_appears(app_url, page, app_home,
                                                                                 two_face_clip):
    home, _ = app_home
    case_id, sha = _job_case(home, two_face_clip[0])
    _open(page, f"{app_url}/?case={case_id}&evidence={sha}")
    page.locator(TEXT).filter(has_text=f"case #{case_id} Job case").first.wait_for()
    name_box = page.get_by_label("Analyst", exact=True)  # a job records who asked: no name, no job
    name_box.fill("ana")
    name_box.press("Enter")
    _wait_until(page, lambda: "analyst=ana" in page.url, lambda: f"the URL does not carry the name: {page.url}",
                "failed-job-name.png")
    page.get_by_role("button", name="Run", exact=True).click()
    # No worker yet: the job waits in the queue, and the page says so.
    queued = page.get_by_text(re.compile(r"Job #\d+ \(sbi-mobilenetv2; asked by ana\): queued"))
    _wait_until(page, lambda: queued.count() > 0, "the page does not show the queued job", "failed-job-queued.png")
    job_id = int(re.search(r"Job #(\d+)", queued.first.inner_text()).group(1))

    # A reload is a new session: the job is still there, read back from the store.
    page.reload(wait_until="domcontentloaded")
    Review(page).wait_loaded("failed-job-reload.png")
    _wait_until(page, lambda: page.get_by_text(re.compile(rf"Job #{job_id} \(.*\): queued")).count() > 0,
                f"after the reload the page does not show job #{job_id}", "failed-job-reload.png")

    # A worker starts (as `make run` starts one): the same tab follows the job to its result, no reload.
    with _worker_pool(home):
        metric = page.locator('[data-testid="stMetric"]').filter(has_text="sbi-mobilenetv2")
        _wait_until(page, lambda: metric.count() > 0, lambda: f"the result of job #{job_id} did not appear\nworker log:\n"
                    + (OUTPUT_DIR / "worker.log").read_text(errors="replace")[-3000:], "failed-job-result.png",
                    timeout_s=180)
    _assert_no_app_error(page)
    from workbench.store import Store

    store = Store(home / "workbench.db")
    try:
        job = store.job(job_id)
        assert job["state"] == "done" and job["result_id"] is not None, job
        assert [a["detector"] for a in store.analyses(sha)] == ["sbi-mobilenetv2"]
    finally:
        store.close()
    _screenshot(page, metric.first, "05-job-result.png")

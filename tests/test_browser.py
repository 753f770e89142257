"""End to end in a real browser: `streamlit run` on 127.0.0.1, driven by Debian's headless Chromium.

Opens the demo case, moves the frame scrubber with the keyboard, checks the frame image (and the
timeline, once there is one) render, and saves screenshots to test-output/browser/.

Skipped, with a message, when /usr/bin/chromium (or WORKBENCH_CHROMIUM) is absent:
`sudo bash scripts/install-browser.sh` installs it; `.ci/run` does so in CI.
"""
from __future__ import annotations

import os
import re
import time

import pytest

from browser_support import CHROMIUM_ARGS, OUTPUT_DIR, require_chromium, server_log_tail, streamlit_server, sync_playwright

# -- What the test looks for: update here when the UI changes. ---------------------------------
# Text shown once the demo case is open (its name; a subheader on Cases, a text line on Review).
DEMO_CASE_TEXT = "Demo: synthetic face swap"
# The scrubber: a Streamlit slider with this exact label.
FRAME_SLIDER_LABEL = "Frame"
SLIDER = '[data-testid="stSlider"]'
SLIDER_LABEL = '[data-testid="stWidgetLabel"]'
# Streamlit <= 1.4x renders a baseweb div[role=slider]; 1.6x a react-aria visually hidden <input type=range>.
SLIDER_THUMB = '[role="slider"], input[type="range"]'
# The frame image: the st.image whose caption starts "frame N · ..." (face crops have other captions).
IMAGE = '[data-testid="stImage"]'
IMAGE_CAPTION = '[data-testid="stImageCaption"]'
FRAME_CAPTION_RE = re.compile(r"^\s*frame (\d+)\b")
# The plotly timeline: the fixture analyses the demo clip with the shipped reference detector first,
# so the Review page must draw it.
TIMELINE = ".js-plotly-plot"
TIMELINE_REQUIRED = True
# Anything that means the app broke (showErrorDetails = "none" still renders stException).
APP_ERROR = '[data-testid="stException"]'
ARROW_PRESSES = 5

LOAD_TIMEOUT_MS = 45_000
STEP_TIMEOUT_S = 20.0


@pytest.fixture
def app_url(tmp_path):
    """A fresh WORKBENCH_HOME with a short demo clip, and `streamlit run` serving the app on it."""
    require_chromium()
    from workbench import demo

    home = tmp_path / "home"
    (home / "demo").mkdir(parents=True)
    demo.make_demo(home / "demo" / "demo.mp4", seconds=2.0, width=640, height=360)
    _analyse_demo_case(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env["WORKBENCH_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    with streamlit_server(env, OUTPUT_DIR / "streamlit.log") as url:
        yield url


def _analyse_demo_case(home) -> None:
    """Create the demo case as the app would, and score it with the reference detector."""
    import detectors.all  # noqa: F401
    from detectors.registry import default_detectors
    from workbench.cases import ensure_demo_case
    from workbench.pipeline import Sampling, analyze
    from workbench.store import Store

    store = Store(home / "workbench.db")
    try:
        case_id = ensure_demo_case(store, home / "evidence", home / "demo" / "demo.mp4")
        evidence = store.case_evidence(case_id)[0]
        analyze(evidence["stored_path"], default_detectors(), Sampling(sample_fps=5), store=store,
                sha256=evidence["sha256"])
    finally:
        store.close()


@pytest.fixture
def page():
    chromium = require_chromium()
    with sync_playwright()() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1600})
            pg = context.new_page()
            pg.set_default_timeout(LOAD_TIMEOUT_MS)
            yield pg
        finally:
            browser.close()


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


def _assert_no_app_error(pg, log) -> None:
    errors = pg.locator(APP_ERROR)
    assert errors.count() == 0, f"the app shows an error: {errors.first.inner_text()!r}\nserver log:\n{log()}"


@pytest.mark.browser
def test_demo_case_scrubs_in_a_real_browser(app_url, page):
    started = time.monotonic()
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    log = lambda: server_log_tail(OUTPUT_DIR / "streamlit.log")  # noqa: E731

    page.goto(app_url, wait_until="domcontentloaded")
    slider = page.locator(SLIDER).filter(
        has=page.locator(SLIDER_LABEL).get_by_text(FRAME_SLIDER_LABEL, exact=True))
    thumb = slider.locator(SLIDER_THUMB).first
    frame_image = page.locator(IMAGE).filter(
        has=page.locator(IMAGE_CAPTION).filter(has_text=FRAME_CAPTION_RE)).first
    img = frame_image.locator("img").first
    try:
        page.get_by_text(DEMO_CASE_TEXT).first.wait_for(state="visible")
        thumb.wait_for(state="attached")  # the react-aria input is visually hidden on purpose
        img.wait_for(state="visible")
        page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=img.element_handle())
    except Exception:
        page.screenshot(path=OUTPUT_DIR / "failed-load.png", full_page=True)
        raise AssertionError(f"the demo case did not render (see {OUTPUT_DIR}/failed-load.png)\n"
                             f"server log:\n{log()}") from None
    _assert_no_app_error(page, log)

    before = _image_state(img)
    start_value = _slider_value(thumb)
    assert _frame_caption(frame_image) == start_value
    assert before["w"] == 640 and before["h"] == 360, before
    _check_timeline(page)
    _screenshot(page, frame_image, "01-loaded.png")

    # Move the scrubber: focus the thumb and press ArrowRight, one step at a time (each step reruns
    # the scrubber fragment; a press while it re-renders could be lost, as it could for a person).
    deadline = time.monotonic() + STEP_TIMEOUT_S
    value, caption, after = start_value, None, before
    for step in range(1, ARROW_PRESSES + 1):
        thumb.focus()
        page.keyboard.press("ArrowRight")
        while True:
            value, caption, after = _slider_value(thumb), _frame_caption(frame_image), _image_state(img)
            if value == start_value + step and caption == value and after["loaded"]:
                break
            if time.monotonic() > deadline:
                page.screenshot(path=OUTPUT_DIR / "failed-scrub.png", full_page=True)
                raise AssertionError(
                    f"scrubbing did not re-render the frame: slider {start_value}->{value}, caption {caption}, "
                    f"image {before['src']} -> {after}\nserver log:\n{log()}")
            page.wait_for_timeout(100)
    assert after["src"] != before["src"]
    assert value == start_value + ARROW_PRESSES, (start_value, value)
    _assert_no_app_error(page, log)
    _check_timeline(page)
    _screenshot(page, frame_image, "02-scrubbed.png")

    elapsed = time.monotonic() - started
    print(f"\nbrowser test: frame {start_value} -> {value}, page part {elapsed:.1f} s, screenshots in {OUTPUT_DIR}")


def _screenshot(page, frame_image, name: str) -> None:
    """Streamlit scrolls inside its main container, so full_page captures only the viewport:
    a tall viewport, scrolled to the frame image, shows the scrubber and the frame together."""
    frame_image.scroll_into_view_if_needed()
    page.screenshot(path=OUTPUT_DIR / name)


def _check_timeline(page) -> None:
    """The plotly timeline, where there is one, drew its SVG with at least one trace."""
    charts = page.locator(TIMELINE)
    if charts.count() == 0:
        assert not TIMELINE_REQUIRED, "no plotly timeline on the page"
        return
    chart = charts.first
    chart.scroll_into_view_if_needed()
    chart.locator(".main-svg").first.wait_for(state="visible")
    box = chart.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 80, box
    assert chart.locator(".scatterlayer .trace, .barlayer .trace").count() > 0, "timeline drew no trace"

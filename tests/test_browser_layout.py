"""The Review page in a real browser at 1400 x 1000: the frame and the timeline in one window, and the keys.

`streamlit run` on 127.0.0.1 with the 2-s demo case scored by the default detector, driven by
Debian's headless Chromium (tests/browser_support.py); screenshots go to test-output/browser/.
Every check waits (bounded) for what it asserts: the machine running the suite may be busy.
"""
from __future__ import annotations

import re

import pytest

from browser_support import (
    OUTPUT_DIR, analysed_demo_home, chromium_page, fail, require_chromium, served, wait_until,
)

VIEWPORT = {"width": 1400, "height": 1000}
DEMO_SAMPLE_FPS = 5
LOAD_TIMEOUT_MS = 45_000
STEP_TIMEOUT_S = 20.0
START_HERE_DISMISS = "Got it, hide this"  # workbench/ui/start_here.py DISMISS_LABEL
FRAME_CAPTION = re.compile(r"^\s*frame (\d+)\b")
LOG = OUTPUT_DIR / "streamlit-layout.log"
# The analyst's threshold for the N/P checks: the demo's scores cross it (the detector's own
# operating threshold is above every score of the 2-s clip, and no score lies near 0.3). Home
# then PageUp x3 on the slider.
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """A WORKBENCH_HOME with the 2-s demo case scored by the default detector, and its review data."""
    require_chromium()
    from workbench import review
    from workbench.store import Store

    home, _, sha = analysed_demo_home(tmp_path_factory.mktemp("browser-layout"), DEMO_SAMPLE_FPS)
    store = Store(home / "workbench.db")
    try:
        return home, review.load_review(store, sha)
    finally:
        store.close()


@pytest.fixture(scope="module")
def url(demo_home):
    with served(demo_home[0], LOG) as base:
        yield base


@pytest.fixture
def page():
    with chromium_page(VIEWPORT, LOAD_TIMEOUT_MS) as pg:
        yield pg


def _fail(pg, what: str, shot: str):
    fail(pg, what, shot, LOG)


def _wait_until(pg, condition, what, shot: str, timeout_s: float = STEP_TIMEOUT_S):
    return wait_until(pg, condition, what, shot, LOG, timeout_s)


class Review:
    """The frame (the image captioned "frame N · ...") and the score timeline."""

    def __init__(self, pg):
        self.page = pg
        caption = pg.locator('[data-testid="stImageCaption"]').filter(has_text=FRAME_CAPTION)
        self.frame_image = pg.locator('[data-testid="stImage"]').filter(has=caption).first
        self.img = self.frame_image.locator("img").first
        self.timeline = pg.locator(".st-key-timeline .js-plotly-plot").first

    def open(self, url: str) -> "Review":
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        self.page.goto(url, wait_until="domcontentloaded")
        try:
            self.img.wait_for(state="visible")
            self.page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=self.img.element_handle())
            self.timeline.locator(".scatterlayer .trace").first.wait_for(state="attached")
        except Exception:
            _fail(self.page, "the Review page did not draw the frame and the timeline", "failed-layout-load.png")
        assert self.page.locator('[data-testid="stException"]').count() == 0
        # The first-launch "start here" box sits above everything until dismissed (once per install):
        # the layout is measured as the analyst sees it every day after that.
        dismiss = self.page.get_by_role("button", name=START_HERE_DISMISS)
        if dismiss.count():
            dismiss.first.click()
            dismiss.first.wait_for(state="detached")
            self.img.wait_for(state="visible")
        return self

    def frame(self) -> int | None:
        texts = self.frame_image.locator('[data-testid="stImageCaption"]').all_inner_texts()
        m = FRAME_CAPTION.match(texts[0]) if texts else None
        return int(m.group(1)) if m else None

    def neutral_focus(self) -> None:
        """Click the page title: the focus leaves every input, so the keys reach the page."""
        self.page.locator("h1").filter(has_text="Review").first.click()
        # A key pressed while the page reruns (or before the listener is installed) can be lost.
        self.page.wait_for_function("() => typeof window.__workbenchKeys === 'function'")
        running = self.page.locator('[data-testid="stStatusWidget"]')
        _wait_until(self.page, lambda: running.count() == 0 or not running.first.is_visible(),
                    "the app never finished running", "failed-layout-idle.png")

    def press(self, key: str, expected: int, shot: str) -> None:
        self.page.keyboard.press(key)
        _wait_until(self.page, lambda: self.frame() == expected,
                    lambda: f"{key} should show frame {expected}, shows {self.frame()}", shot)


def _in_window(box: dict | None) -> bool:
    return bool(box) and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= VIEWPORT["width"] \
        and box["y"] + box["height"] <= VIEWPORT["height"]


@pytest.mark.browser
def test_frame_and_timeline_fit_one_1400x1000_window(url, page):
    review = Review(page).open(url)
    page.wait_for_timeout(500)  # let the layout settle (plotly sizes itself after mounting)
    frame_box, chart_box = review.img.bounding_box(), review.timeline.bounding_box()
    page.screenshot(path=OUTPUT_DIR / "layout-1400x1000.png")
    scrolled = page.evaluate("() => Math.max(...[...document.querySelectorAll('section, div')]"
                             ".map(e => e.scrollTop || 0), window.scrollY)")
    assert scrolled == 0, "the page scrolled: the boxes below would not be what an analyst sees on opening"
    assert frame_box["width"] > 300 and chart_box["height"] > 200, (frame_box, chart_box)
    assert _in_window(frame_box), f"the frame is not all in the 1400x1000 window: {frame_box}"
    assert _in_window(chart_box), f"the timeline is not all in the 1400x1000 window: {chart_box}"
    print(f"\nlayout at 1400x1000: frame {frame_box}, timeline {chart_box}")

    page.get_by_role("button", name="Keys").click()  # the keys are documented on the page
    page.get_by_text("next threshold crossing").first.wait_for(state="visible")
    page.screenshot(path=OUTPUT_DIR / "layout-keys.png")
    page.keyboard.press("Escape")

    # The loupe: the face at the video's own pixels, shown at its own size (no browser scaling).
    page.locator('[data-testid="stCheckbox"]').filter(has_text="Loupe").locator("label").first.click()
    loupe = page.locator('[data-testid="stImage"]').filter(
        has=page.locator('[data-testid="stImageCaption"]').filter(has_text="loupe ·")).locator("img").first
    loupe.wait_for(state="visible")
    page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=loupe.element_handle())
    loupe.scroll_into_view_if_needed()
    shown = loupe.evaluate("e => [e.naturalWidth, e.naturalHeight, e.getBoundingClientRect().width,"
                           " e.getBoundingClientRect().height]")
    assert shown[0] == round(shown[2]) and shown[1] == round(shown[3]), f"the loupe was scaled: {shown}"
    page.screenshot(path=OUTPUT_DIR / "layout-loupe.png")


@pytest.mark.browser
def test_keys_step_jump_to_crossings_and_play(url, page, demo_home):
    from workbench import review as rv

    data = demo_home[1]
    review = Review(page).open(url)
    fps = round(data.fps)
    start = review.frame()
    review.neutral_focus()
    review.press("ArrowRight", start + 1, "failed-key-right.png")
    review.press("Shift+ArrowRight", start + 1 + fps, "failed-key-shift-right.png")
    review.press("ArrowLeft", start + fps, "failed-key-left.png")
    review.press("Shift+ArrowLeft", start, "failed-key-shift-left.png")

    # Typing in an input never scrubs: the time box takes its own keys.
    time_box = page.get_by_label("Time (s)", exact=True)
    time_box.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("n")
    page.wait_for_timeout(1500)
    assert review.frame() == start, "a key typed into the time box moved the frame"

    # N/P follow the analyst's threshold: set it to THRESHOLD with the slider's keys.
    slider = page.locator('[data-testid="stSlider"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]').get_by_text("Threshold", exact=True))
    thumb = slider.locator('input[type="range"], [role="slider"]').first
    value = lambda: float(thumb.evaluate("e => e.getAttribute('aria-valuenow') ?? e.value"))  # noqa: E731
    for key, goal in [("Home", 0.0)] + [("PageUp", round(0.1 * i, 2)) for i in (1, 2, 3)]:
        thumb.focus()
        page.keyboard.press(key)
        _wait_until(page, lambda: abs(value() - goal) < 1e-6, lambda: f"threshold {value()} after {key}, not {goal}",
                    "failed-threshold.png")
    next_crossing = page.get_by_role("button", name="crossing ▶")
    _wait_until(page, lambda: next_crossing.is_enabled(), "the page did not take the threshold (no crossing)",
                "failed-threshold-taken.png")
    crossings = rv.crossings(data, rv.headline_series(data), THRESHOLD)
    later = [f for f in crossings if f > start]
    assert later, f"the demo's scores should cross {THRESHOLD} after frame {start}: {crossings}"
    review.neutral_focus()
    review.press("n", later[0], "failed-key-n.png")
    earlier = [f for f in crossings if f < later[0]]
    if earlier:
        review.press("p", earlier[-1], "failed-key-p.png")

    # Space plays (the Play toggle shows it and the frame moves on its own), K pauses.
    toggle = page.locator('[data-testid="stCheckbox"]').filter(has_text="Play").locator("input").first
    page.keyboard.press(" ")
    _wait_until(page, lambda: toggle.is_checked(), "Space did not switch Play on", "failed-key-space.png")
    _wait_until(page, lambda: (review.frame() or 0) > later[0], "Play did not move the frame", "failed-key-play.png")
    review.neutral_focus()
    page.keyboard.press("k")
    _wait_until(page, lambda: not toggle.is_checked(), "K did not pause", "failed-key-k.png")

    def settled():  # a step already under way when K arrived may still land
        before = review.frame()
        page.wait_for_timeout(1200)
        return before if review.frame() == before else None

    paused = _wait_until(page, settled, "the frame kept moving after K", "failed-key-k-settle.png")
    # Played to the end, Play would have stopped there by itself: K stopped it before.
    assert paused < data.frames_analysed[-1], (paused, data.frames_analysed[-1])

    # J plays backwards (through the analysed frames), K pauses again.
    page.keyboard.press("j")
    _wait_until(page, lambda: (review.frame() or 0) < paused, "J did not play backwards", "failed-key-j.png")
    page.keyboard.press("k")
    _wait_until(page, lambda: not toggle.is_checked(), "K did not pause the backwards play", "failed-key-k2.png")
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=OUTPUT_DIR / "layout-keys-done.png")


@pytest.mark.browser
def test_fifteen_track_labels_do_not_overlap_when_drawn(page):
    """The timeline of 15 faces peaking close together, drawn by plotly.js in Chromium: no two
    "T<id>" labels' boxes intersect, and no two score lines share a colour."""
    from workbench import review as rv

    analysed = list(range(0, 200, 4))
    box = (10.0, 10.0, 60.0, 60.0)
    tracks = {t: {f: (box, True) for f in analysed} for t in range(1, 16)}
    # Peaks 4 frames apart (2% of the axis) at nearly the same height: the worst case for labels.
    scores = {(f, t): (0.8 + 0.005 * t if f == 60 + 4 * t else 0.1 + 0.01 * t) for f in analysed for t in tracks}
    view = rv.DetectorView("tiny-test", "1", "ok", 0.5, None, 0.5, "rule", analysed, "0" * 64, "now", 1, scores)
    data = rv.ReviewData("0" * 64, {"fps": 25, "frames": 200}, 1, analysed, tracks, {"tiny-test": view})
    fig = rv.timeline_figure(data, 0, 0.5, height=300)
    fig.update_layout(width=407)  # the timeline's width at 1400 x 1000
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    html = OUTPUT_DIR / "timeline-15-tracks.html"
    fig.write_html(html, include_plotlyjs=True, full_html=True)  # plotly.js inlined from the package: no network
    page.goto(html.as_uri())
    page.locator(".annotation").first.wait_for(state="attached")
    boxes = page.evaluate("""() => [...document.querySelectorAll('.annotation')].map(a => {
        const t = a.querySelector('.annotation-text'); const r = a.getBoundingClientRect();
        return {text: t ? t.textContent : '', x1: r.left, y1: r.top, x2: r.right, y2: r.bottom}; })""")
    labels = [b for b in boxes if re.fullmatch(r"T\d+", b["text"])]
    assert sorted(b["text"] for b in labels) == sorted(f"T{t}" for t in range(1, 16))
    overlapping = [(a["text"], b["text"]) for i, a in enumerate(labels) for b in labels[i + 1:]
                   if a["x1"] < b["x2"] and b["x1"] < a["x2"] and a["y1"] < b["y2"] and b["y1"] < a["y2"]]
    page.screenshot(path=OUTPUT_DIR / "timeline-15-tracks.png")
    assert overlapping == [], overlapping
    colours = [t.line.color for t in fig.data if t.name and " · T" in t.name]
    assert len(colours) == 15 and len(set(colours)) == 15

"""The demo's first screen in a real browser: results already there, the truth band on the timeline, the
start-here box until dismissed (and still gone after a reload).

Saves test-output/browser/demo-first-screen.png. Skips without Chromium on a user's machine, fails in CI
(see browser_support.require_chromium).
"""
from __future__ import annotations

import time

import pytest

from browser_support import (
    CHROMIUM_ARGS, OUTPUT_DIR, require_chromium, served, server_log_tail, sync_playwright,
)

TIMELINE = ".js-plotly-plot"
APP_ERROR = '[data-testid="stException"]'
START_HERE = "Start here"
DISMISS = "Got it, hide this"
LOAD_TIMEOUT_MS = 60_000
LOG = OUTPUT_DIR / "streamlit-demo.log"


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """A fresh WORKBENCH_HOME whose demo clip reaches the swapped segment (4.4 s: frames 100-109),
    set up as `make run` does: the demo case created and analysed once by the reference detector."""
    require_chromium()
    from workbench import cases, demo
    from workbench.store import Store

    home = tmp_path_factory.mktemp("browser-demo") / "home"
    clip = home / "demo" / "demo.mp4"
    clip.parent.mkdir(parents=True)
    demo.make_demo(clip, seconds=4.4, width=640, height=360)
    store = Store(home / "workbench.db")
    try:
        case_id = cases.ensure_demo_case(store, home / "evidence", clip)
        assert [i["done"] for i in cases.analyse_demo(store, case_id)] == ["analysed"]
    finally:
        store.close()
    with served(home, LOG) as url:
        yield url


def _fail(pg, shot: str, what: str):
    pg.screenshot(path=OUTPUT_DIR / shot, full_page=True)
    raise AssertionError(f"{what} (see {OUTPUT_DIR / shot})\nserver log:\n{server_log_tail(LOG)}")


@pytest.mark.browser
def test_demo_first_screen_teaches(demo_url):
    chromium = require_chromium()
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    with sync_playwright()() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            pg.set_default_timeout(LOAD_TIMEOUT_MS)
            pg.goto(demo_url, wait_until="domcontentloaded")
            try:
                pg.get_by_text(START_HERE, exact=True).first.wait_for(state="visible")
                chart = pg.locator(TIMELINE).first
                # plotly draws a shape's annotation as SVG text: the band is on the drawn timeline.
                chart.locator(".annotation-text").filter(has_text="ground truth: swapped (demo)").first.wait_for(
                    state="attached")
            except Exception:
                _fail(pg, "demo-failed-first-screen.png", "the first screen lacks the start box or the truth band")
            assert pg.locator(APP_ERROR).count() == 0
            assert pg.get_by_text("sbi-mobilenetv2", exact=False).count() > 0  # results, not "No detector has run"
            pg.screenshot(path=OUTPUT_DIR / "demo-first-screen.png")
            chart.scroll_into_view_if_needed()
            pg.screenshot(path=OUTPUT_DIR / "demo-truth-band.png")

            pg.get_by_role("button", name=DISMISS, exact=True).click()
            deadline = time.monotonic() + 20
            while pg.get_by_text(START_HERE, exact=True).count():
                if time.monotonic() > deadline:
                    _fail(pg, "demo-failed-dismiss.png", "the start box stayed after Got it")
                pg.wait_for_timeout(100)
            pg.reload(wait_until="domcontentloaded")
            pg.locator(TIMELINE).first.wait_for(state="visible")
            assert pg.get_by_text(START_HERE, exact=True).count() == 0  # remembered across a reload
        finally:
            browser.close()

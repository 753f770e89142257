"""The Compare page in a real browser: an original and a suspect side by side, one cursor steps both, an offset
moves one, the difference view shows where they differ.

Saves test-output/browser/compare-*.png. Skips without Chromium on a user's machine, fails in CI (see
browser_support.require_chromium).
"""
from __future__ import annotations

import re
import time

import pytest

from browser_support import (
    CHROMIUM_ARGS, OUTPUT_DIR, require_chromium, served, server_log_tail, sync_playwright,
)

CAPTION = '[data-testid="stImageCaption"]'
SIDE_CAPTION = re.compile(r"^\s*([AB]) · frame (\d+) · ")
NUMBER_INPUT = '[data-testid="stNumberInput"]'
WIDGET_LABEL = '[data-testid="stWidgetLabel"]'
APP_ERROR = '[data-testid="stException"]'
LOAD_TIMEOUT_MS = 45_000
STEP_TIMEOUT_S = 20.0
LOG = OUTPUT_DIR / "streamlit-compare.log"


@pytest.fixture(scope="module")
def compare_url(tmp_path_factory):
    """A WORKBENCH_HOME with one case: an original clip and the same scene with one face swapped from
    1.0 s to 1.6 s (the suspect, scored by the reference detector)."""
    require_chromium()
    from detectors.registry import default_detectors
    from workbench import demo
    from workbench.evidence import ingest
    from workbench.pipeline import Sampling
    from workbench.service import analyse_evidence
    from workbench.store import Store

    home = tmp_path_factory.mktemp("browser-compare") / "home"
    clips = home.parent / "clips"
    clips.mkdir(parents=True)
    scene = dict(seconds=2.0, fps=25, width=640, height=360, gop=25)
    demo.make_clip(clips / "original.mp4", demo.demo_faces(), **scene)
    demo.make_clip(clips / "suspect.mp4", demo.demo_faces(), **scene, swap=(1.0, 1.6),
                   swap_target=demo.DEMO_SWAP_TARGET, swap_donor=demo.DEMO_SWAP_DONOR)
    store = Store(home / "workbench.db")
    try:
        case_id = store.create_case("Original and suspect", actor="test")
        ingest(store, clips / "original.mp4", "original.mp4", home / "evidence", "test", case_id)
        suspect = ingest(store, clips / "suspect.mp4", "suspect.mp4", home / "evidence", "test", case_id)
        analyse_evidence(store, suspect["sha256"], default_detectors(), Sampling(sample_fps=2), actor="test")
    finally:
        store.close()
    with served(home, LOG) as url:
        yield url


def _frames(pg) -> dict[str, int]:
    shown = {}
    for text in pg.locator(CAPTION).all_inner_texts():
        m = SIDE_CAPTION.match(text)
        if m:
            shown[m.group(1)] = int(m.group(2))
    return shown


def _wait_for(pg, want: dict[str, int], shot: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while _frames(pg) != want:
        if time.monotonic() > deadline:
            pg.screenshot(path=OUTPUT_DIR / shot, full_page=True)
            raise AssertionError(f"expected {want}, the page shows {_frames(pg)} (see {OUTPUT_DIR / shot})\n"
                                 f"server log:\n{server_log_tail(LOG)}")
        pg.wait_for_timeout(100)
    errors = pg.locator(APP_ERROR)
    assert errors.count() == 0, errors.first.inner_text()


@pytest.mark.browser
def test_compare_steps_both_videos_offsets_one_and_shows_the_difference(compare_url):
    chromium = require_chromium()
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    with sync_playwright()() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            pg.set_default_timeout(LOAD_TIMEOUT_MS)
            pg.goto(f"{compare_url}/compare", wait_until="domcontentloaded")
            pg.locator("h1").filter(has_text="Compare").first.wait_for(state="visible")
            _wait_for(pg, {"A": 0, "B": 0}, "compare-failed-load.png")

            pg.get_by_role("button", name="+1 frame", exact=True).click()
            _wait_for(pg, {"A": 1, "B": 1}, "compare-failed-step.png")

            offset = pg.locator(NUMBER_INPUT).filter(
                has=pg.locator(WIDGET_LABEL).get_by_text("B: offset (frames)", exact=True)).locator("input")
            offset.fill("5")
            offset.press("Enter")
            _wait_for(pg, {"A": 1, "B": 6}, "compare-failed-offset.png")
            offset.fill("0")
            offset.press("Enter")
            _wait_for(pg, {"A": 1, "B": 1}, "compare-failed-offset.png")
            pg.get_by_role("button", name="+1 s", exact=True).click()
            _wait_for(pg, {"A": 26, "B": 26}, "compare-failed-step.png")  # inside the suspect's swapped segment
            pg.locator(CAPTION).filter(has_text=SIDE_CAPTION).first.scroll_into_view_if_needed()
            pg.screenshot(path=OUTPUT_DIR / "compare-side-by-side.png")

            pg.get_by_text("Difference view", exact=True).click()
            difference = pg.locator(CAPTION).filter(has_text="|A − B| per pixel").first
            difference.wait_for(state="visible", timeout=STEP_TIMEOUT_S * 1000)
            assert "resized" not in difference.inner_text()  # same size: a plain difference
            difference.scroll_into_view_if_needed()
            pg.screenshot(path=OUTPUT_DIR / "compare-difference.png")
        finally:
            browser.close()

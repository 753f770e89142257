"""The Review page's panels in a real browser: Grad-CAM follows the scrubber when "Explain while scrubbing" is on,
and the frame exports as a PNG that carries its provenance. Screenshots go to test-output/browser/.

Same setup as tests/test_browser.py (Debian's Chromium via playwright, `streamlit run` on 127.0.0.1):
skips without Chromium on a user's machine, fails in CI.
"""
from __future__ import annotations

import re

import pytest

from browser_support import OUTPUT_DIR, analysed_demo_home, chromium_page, require_chromium, served, wait_until

IMAGE = '[data-testid="stImage"]'
IMAGE_CAPTION = '[data-testid="stImageCaption"]'
SLIDER = '[data-testid="stSlider"]'
WIDGET_LABEL = '[data-testid="stWidgetLabel"]'
SLIDER_THUMB = '[role="slider"], input[type="range"]'
TOGGLE = '[data-testid="stCheckbox"]'
APP_ERROR = '[data-testid="stException"]'
FRAME_CAPTION_RE = re.compile(r"^\s*frame (\d+)\b")
LOAD_TIMEOUT_MS = 45_000
# A Grad-CAM pass of the default detector takes seconds on a loaded 2-core machine.
GRADCAM_TIMEOUT_S = 90.0
LOG = OUTPUT_DIR / "streamlit-panels.log"


@pytest.fixture(scope="module")
def app_home(tmp_path_factory):
    """A fresh WORKBENCH_HOME with the demo case scored by the default detectors."""
    require_chromium()
    home, _, sha = analysed_demo_home(tmp_path_factory.mktemp("browser-panels"), sample_fps=5)
    return home, sha


@pytest.fixture(scope="module")
def app_url(app_home):
    with served(app_home[0], LOG) as url:
        yield url


@pytest.fixture
def page():
    with chromium_page({"width": 1400, "height": 1600}, LOAD_TIMEOUT_MS, accept_downloads=True) as pg:
        yield pg


def _wait_until(pg, condition, what, shot: str, timeout_s: float = 30.0):
    return wait_until(pg, condition, what, shot, LOG, timeout_s, poll_ms=150)


def _captions(pg) -> list[str]:
    return pg.locator(IMAGE_CAPTION).all_inner_texts()


def _frame(pg) -> int | None:
    for text in _captions(pg):
        m = FRAME_CAPTION_RE.match(text)
        if m:
            return int(m.group(1))
    return None


def _shown_frame(pg) -> int:
    """The frame number the page shows, waiting (bounded) while a rerun or a preview hides it."""
    (frame,) = _wait_until(pg, lambda: (lambda f: (f,) if f is not None else None)(_frame(pg)),
                           "the Review page shows no frame", "failed-panels-frame.png")
    return frame


def _heatmap_shown(pg, frame: int) -> bool:
    """The Grad-CAM overlay of this frame is drawn and its image has loaded."""
    figure = pg.locator(IMAGE).filter(has=pg.locator(IMAGE_CAPTION).filter(has_text=f"Grad-CAM · frame {frame} ·"))
    if figure.count() == 0:
        return False
    return bool(figure.first.locator("img").first.evaluate("e => e.complete && e.naturalWidth > 0"))


def _open_named(pg, url: str) -> None:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    pg.goto(url, wait_until="domcontentloaded")
    _wait_until(pg, lambda: _frame(pg) is not None, "the Review page did not show a frame", "failed-panels-load.png",
                timeout_s=LOAD_TIMEOUT_MS / 1000)
    name_box = pg.get_by_label("Analyst", exact=True)
    name_box.fill("ana")
    name_box.press("Enter")
    _wait_until(pg, lambda: "analyst=ana" in pg.url, lambda: f"the name did not take: {pg.url}", "failed-panels-name.png")
    # The name reruns the page: while it redraws, the frame's place may hold the labelled low-res
    # preview (or nothing) for a moment. Wait for the exact frame again before reading it.
    _wait_until(pg, lambda: _frame(pg) is not None, "the Review page did not show the frame again after the name",
                "failed-panels-reload.png", timeout_s=LOAD_TIMEOUT_MS / 1000)


@pytest.mark.browser
def test_explain_while_scrubbing_follows_the_frame(app_url, page):
    _open_named(page, app_url)
    start = _shown_frame(page)
    page.locator(TOGGLE).filter(has_text="Explain while scrubbing").first.locator("label").first.click()
    _wait_until(page, lambda: _heatmap_shown(page, start), f"no Grad-CAM for frame {start} after the toggle",
                "failed-panels-explain.png", GRADCAM_TIMEOUT_S)
    slider = page.locator(SLIDER).filter(has=page.locator(WIDGET_LABEL).get_by_text("Frame", exact=True))
    slider.locator(SLIDER_THUMB).first.focus()
    page.keyboard.press("ArrowRight")  # one frame on; nothing else is clicked
    _wait_until(page, lambda: _frame(page) == start + 1, f"the scrubber did not step from {start}",
                "failed-panels-step.png")
    _wait_until(page, lambda: _heatmap_shown(page, start + 1), f"no Grad-CAM for frame {start + 1} while scrubbing",
                "failed-panels-explain-step.png", GRADCAM_TIMEOUT_S)
    assert page.locator(APP_ERROR).count() == 0
    assert any(c.startswith("colour scale") for c in _captions(page))
    heat = page.locator(IMAGE).filter(has=page.locator(IMAGE_CAPTION).filter(has_text=f"Grad-CAM · frame {start + 1}"))
    heat.first.scroll_into_view_if_needed()
    page.screenshot(path=OUTPUT_DIR / "panels-01-explain-while-scrubbing.png")


@pytest.mark.browser
def test_export_downloads_a_png_that_names_its_frame_and_evidence(app_url, app_home, page):
    from workbench.export import read_png_metadata

    _, sha = app_home
    _open_named(page, app_url)
    frame = _shown_frame(page)
    page.get_by_role("button", name="Export frame + faces as PNG").click()
    name = f"{sha[:12]}-frame{frame:06d}.png"
    button = page.get_by_role("button", name="Download frame PNG")
    button.wait_for(state="visible")
    with page.expect_download() as info:
        button.click()
    download = info.value
    assert download.suggested_filename == name
    data = open(download.path(), "rb").read()
    meta = read_png_metadata(data)
    assert meta["frame"] == str(frame) and meta["evidence_sha256"] == sha and meta["analyst"] == "ana"
    assert page.locator(APP_ERROR).count() == 0
    button.scroll_into_view_if_needed()
    page.screenshot(path=OUTPUT_DIR / "panels-02-export.png")

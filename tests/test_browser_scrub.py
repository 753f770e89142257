"""Scrubbing in a real browser: a far seek shows the labelled low-res proxy first, then the exact frame in its place."""
from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest

from browser_support import CHROMIUM_ARGS, OUTPUT_DIR, require_chromium, server_log_tail, streamlit_server, sync_playwright
from workbench.framecache import PROXY_LABEL
from workbench.video import write_video

FRAME_CAPTION_RE = re.compile(r"^\s*frame (\d+)\b")
FPS = 25
FRAMES = 250  # one key frame: the last frame is 249 frames of decoding away from it
SIZE = (1920, 1080)
# Records every image caption the page shows, in order (consecutive repeats once).
RECORD_CAPTIONS = """() => {
  window.__captions = [];
  const seen = () => document.querySelectorAll('[data-testid="stImageCaption"]').forEach(e => {
    const t = e.innerText;
    if (window.__captions[window.__captions.length - 1] !== t) window.__captions.push(t);
  });
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def _frames():
    """Smooth frames (quick to encode) that each differ: a gradient and a bar moving across."""
    w, h = SIZE
    ramp = np.linspace(0, 200, w, dtype=np.float32)[None, :, None]
    for i in range(FRAMES):
        rgb = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8).copy()
        x = (i * 7) % (w - 60)
        rgb[:, x:x + 60] = (255, 64, 32)
        yield rgb


@pytest.fixture(scope="module")
def scrub_home(tmp_path_factory):
    require_chromium()
    from workbench.evidence import ingest
    from workbench.store import Store

    home = tmp_path_factory.mktemp("browser-scrub") / "home"
    home.mkdir(parents=True)
    clip = home / "long_gop.mp4"
    write_video(clip, _frames(), fps=FPS, gop=FRAMES)
    store = Store(home / "workbench.db")
    try:
        case_id = store.create_case("Scrub case", "a long GOP", actor="test")
        evidence = ingest(store, clip, "long_gop.mp4", home / "evidence", "test", case_id)
    finally:
        store.close()
    return home, case_id, evidence["sha256"]


@pytest.mark.browser
def test_a_far_seek_shows_a_labelled_proxy_then_the_exact_frame(scrub_home):
    home, case_id, sha = scrub_home
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env.update(WORKBENCH_HOME=str(home), PYTHONUNBUFFERED="1")
    log = OUTPUT_DIR / "streamlit-scrub.log"
    with streamlit_server(env, log) as url, sync_playwright()() as p:
        browser = p.chromium.launch(executable_path=require_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(45_000)
            page.goto(f"{url}/?case={case_id}&evidence={sha}", wait_until="domcontentloaded")
            caption = page.locator('[data-testid="stImageCaption"]').filter(has_text=FRAME_CAPTION_RE).first
            caption.wait_for(state="visible")
            assert FRAME_CAPTION_RE.match(caption.inner_text()).group(1) == "0"
            time.sleep(3)  # the app builds the proxies in the background once the file is open
            page.evaluate(RECORD_CAPTIONS)
            box = page.get_by_label("Time (s)", exact=True).and_(page.locator("input"))
            box.fill(f"{(FRAMES - 1) / FPS:.3f}")
            box.press("Enter")
            page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stImageCaption\"]')]"
                                   ".some(e => /^\\s*frame 249\\b/.test(e.innerText))")
            seen = page.evaluate("() => window.__captions")
            page.locator('[data-testid="stImage"]').filter(has_text=re.compile(r"^\s*frame 249\b")).first \
                .scroll_into_view_if_needed()
            page.screenshot(path=OUTPUT_DIR / "scrub-exact-after-proxy.png")
            shown_now = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
        finally:
            browser.close()
    detail = f"captions seen: {seen}\nserver log:\n{server_log_tail(log)}"
    proxies = [i for i, text in enumerate(seen) if PROXY_LABEL in text]
    exact = [i for i, text in enumerate(seen) if re.match(r"^\s*frame 249\b", text)]
    assert proxies, "no low-res preview was shown while frame 249 decoded\n" + detail
    assert exact and proxies[0] < exact[0], detail
    assert not any(PROXY_LABEL in text for text in shown_now), "the preview stayed on screen\n" + detail

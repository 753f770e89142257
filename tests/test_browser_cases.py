"""Cases and notes in a real browser (issue 14): a file added appears in the table at once and
opens in Review; a note saved in one tab appears in another open tab without a reload; the Edit
popover closes after saving. Screenshots go to test-output/browser/cases-*.png.

Skips without Chromium on a user's machine and fails in CI, as tests/test_browser.py does.
"""
from __future__ import annotations

import os

import pytest

from browser_support import OUTPUT_DIR, chromium, require_chromium, server_log_tail, streamlit_server, wait_until

EMPTY_CASE = "Empty case"
ADDED_NAME = "interview.mp4"
HEADING = "h1"
NAV_LINK = '[data-testid="stSidebarNav"] a'
TEXT = '[data-testid="stText"]'
CODE = '[data-testid="stCode"]'
APP_ERROR = '[data-testid="stException"]'
POPOVER_BODY = '[data-testid="stPopoverBody"]'
LOAD_TIMEOUT_MS = 45_000
STEP_TIMEOUT_S = 30.0
LOG = OUTPUT_DIR / "streamlit-cases.log"


@pytest.fixture(scope="module")
def app_home(tmp_path_factory, h264_clip):
    """The demo case and an empty case; the import folder holds one clip."""
    require_chromium()
    from workbench import demo
    from workbench.cases import ensure_demo_case
    from workbench.store import Store

    home = tmp_path_factory.mktemp("browser-cases") / "home"
    (home / "demo").mkdir(parents=True)
    demo.make_demo(home / "demo" / "demo.mp4", seconds=2.0, width=640, height=360)
    import_dir = home / "import"
    import_dir.mkdir()
    (import_dir / ADDED_NAME).write_bytes(h264_clip.read_bytes())
    store = Store(home / "workbench.db")
    try:
        demo_case = ensure_demo_case(store, home / "evidence", home / "demo" / "demo.mp4")
        empty = store.create_case(EMPTY_CASE, "a file is added in the browser", actor="test")
    finally:
        store.close()
    return home, {"demo": demo_case, "empty": empty}


@pytest.fixture(scope="module")
def app_url(app_home):
    home, _ = app_home
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env.update(WORKBENCH_HOME=str(home), WORKBENCH_IMPORT_DIR=str(home / "import"), PYTHONUNBUFFERED="1")
    with streamlit_server(env, LOG) as url:
        yield url


@pytest.fixture
def browser():
    with chromium() as launched:
        yield launched


VIEWPORT = {"width": 1400, "height": 1000}  # the size the issue was seen at


def _tab(context, url: str):
    pg = context.new_page()
    pg.set_default_timeout(LOAD_TIMEOUT_MS)
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    pg.goto(url, wait_until="domcontentloaded")
    pg.locator(HEADING).first.wait_for(state="visible")
    return pg


def _wait_until(pg, condition, what: str, shot: str, timeout_s: float = STEP_TIMEOUT_S):
    wait_until(pg, condition, what, shot, LOG, timeout_s)


def _go(pg, link: str, title: str, shot: str) -> None:
    """Click a sidebar link until the page's title shows (a click during a rerun can be dropped)."""
    heading = pg.locator(HEADING).filter(has_text=title).first
    for attempt in range(3):
        pg.locator(NAV_LINK).filter(has_text=link).first.click()
        try:
            heading.wait_for(state="visible", timeout=STEP_TIMEOUT_S * 1000)
            return
        except Exception:
            if attempt == 2:
                pg.screenshot(path=OUTPUT_DIR / shot, full_page=True)
                raise AssertionError(f"the {title} page did not open (see {OUTPUT_DIR / shot})") from None


def _name(pg, who: str) -> None:
    box = pg.get_by_label("Analyst", exact=True)
    box.fill(who)
    box.press("Enter")
    _wait_until(pg, lambda: f"analyst={who}" in pg.url, f"the URL does not carry the name {who}", "cases-failed-name.png")


def _no_error(pg) -> None:
    errors = pg.locator(APP_ERROR)
    assert errors.count() == 0, f"the app shows an error: {errors.first.inner_text()!r}\n{server_log_tail(LOG)}"


@pytest.mark.browser
def test_a_file_added_appears_in_the_table_and_opens_in_review(app_url, app_home, browser):
    home, facts = app_home
    pg = _tab(browser.new_context(viewport=VIEWPORT), f"{app_url}/?case={facts['empty']}")
    _name(pg, "ana")
    _go(pg, "Cases", "Cases", "cases-failed-open.png")
    pg.get_by_text(f"Case #{facts['empty']}", exact=True).wait_for(state="visible")
    pg.get_by_text("No evidence in this case yet.").wait_for(state="visible")
    pg.get_by_role("tab", name="From the evidence folder").click()
    pg.get_by_role("button", name="Add selected file").click()
    # At once, without another click or a reload: the table, the file's full name and whole hash.
    picked = pg.locator(TEXT).filter(has_text=f"file {ADDED_NAME}")
    _wait_until(pg, lambda: picked.count() > 0 and pg.get_by_text("No evidence in this case yet.").count() == 0,
                "the file added is not in the table", "cases-failed-added.png")
    from workbench.store import Store

    store = Store(home / "workbench.db")
    try:
        (added,) = store.case_evidence(facts["empty"])
    finally:
        store.close()
    table = pg.locator('[data-testid="stDataFrame"]')
    table.first.wait_for(state="visible")
    # The grid draws on a canvas; its accessible table (glide-data-grid's) holds the cells' text.
    cells = table.first.locator("table")
    _wait_until(pg, lambda: ADDED_NAME in cells.first.inner_text() and added["sha256"][:12] in cells.first.inner_text(),
                "the table does not list the file just added", "cases-failed-table.png")
    assert added["sha256"] in pg.locator(CODE).first.inner_text()
    _no_error(pg)
    pg.screenshot(path=OUTPUT_DIR / "cases-01-added.png")
    pg.get_by_role("button", name="Open it in Review").click()
    line = pg.locator(TEXT).filter(has_text=f"case #{facts['empty']} {EMPTY_CASE}  ·  {ADDED_NAME}")
    _wait_until(pg, lambda: line.count() > 0, "Review did not open the file just added", "cases-failed-review.png")
    pg.locator('[data-testid="stImage"] img').first.wait_for(state="visible")
    assert pg.get_by_label("Analyst", exact=True).input_value() == "ana", "the page change lost the analyst's name"
    _no_error(pg)
    pg.screenshot(path=OUTPUT_DIR / "cases-02-review.png")


@pytest.mark.browser
def test_a_note_saved_in_one_tab_appears_in_another_without_a_reload(app_url, app_home, browser):
    _, facts = app_home
    context = browser.new_context(viewport=VIEWPORT)
    tab_a, tab_b = _tab(context, f"{app_url}/?case={facts['demo']}"), _tab(context, f"{app_url}/?case={facts['demo']}")
    for tab, who in ((tab_a, "ana"), (tab_b, "bob")):
        _name(tab, who)
        _go(tab, "Notes", "Notes & verdict", f"cases-failed-notes-{who}.png")
    text = "seam at the jaw, seen in tab A"
    tab_a.get_by_label("New note").fill(text)
    tab_a.get_by_role("button", name="Save note").click()
    tab_a.locator(TEXT).filter(has_text=text).first.wait_for(state="visible")
    # Tab B was open all along: its notes list polls, so the note appears there without a reload.
    shown_in_b = tab_b.locator(TEXT).filter(has_text=text)
    _wait_until(tab_b, lambda: shown_in_b.count() > 0, "tab B does not show the note saved in tab A", "cases-failed-tab-b.png")
    _no_error(tab_b)
    tab_b.screenshot(path=OUTPUT_DIR / "cases-03-note-in-tab-b.png")

    # Tab B edits it: the popover stays open while the list polls, and closes once saved.
    tab_b.get_by_role("button", name="Edit").first.click()
    editor = tab_b.locator(POPOVER_BODY).get_by_label("Text")
    editor.wait_for(state="visible")
    tab_b.wait_for_timeout(2500)  # longer than one poll of the list
    assert editor.is_visible(), "the Edit popover closed by itself while the list refreshed"
    editor.fill("seam at the jaw, confirmed in tab B")
    tab_b.locator(POPOVER_BODY).get_by_role("button", name="Save new version").click()
    popover_open = lambda: tab_b.locator(POPOVER_BODY).count() > 0 and tab_b.locator(POPOVER_BODY).first.is_visible()  # noqa: E731
    _wait_until(tab_b, lambda: tab_b.locator(TEXT).filter(has_text="confirmed in tab B").count() > 0 and not popover_open(),
                "the Edit popover is still open after saving", "cases-failed-popover.png")
    shown_in_a = tab_a.locator(TEXT).filter(has_text="confirmed in tab B")
    _wait_until(tab_a, lambda: shown_in_a.count() > 0, "tab A does not show tab B's new version", "cases-failed-tab-a.png")
    _no_error(tab_a)
    tab_b.screenshot(path=OUTPUT_DIR / "cases-04-popover-closed.png")
    context.close()

"""Streamlit entry point: `streamlit run workbench/ui/app.py` (what `make run` starts)."""
from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts this file's folder on sys.path, not the repository root.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from detectors.base import SCOPE_CAVEAT  # noqa: E402
from workbench import config  # noqa: E402
from workbench.ui import auth, errors, identity as who, resources, selection  # noqa: E402

def main() -> None:
    st.set_page_config(page_title="Deepfake analyst workbench", layout="wide")
    # Team mode: anyone not signed in and allowlisted sees only the login page; the script stops
    # here, before any page, case or file is touched (the demo case included).
    identity = auth.gate()
    if identity is not None:
        who.sign_in(identity)  # notes, verdicts and audit entries carry it
    else:
        who.restore_from_url()  # before the Analyst box is drawn: a reload keeps the typed name
    store = resources.store()  # creates the demo case on a fresh install
    selection.restore_from_url(store)  # a link or a reload opens the same case, evidence and frame
    nav = {
        "cases": st.Page("views/cases.py", title="Cases"),
        "review": st.Page("views/review.py", title="Review", default=True),
        "compare": st.Page("views/compare.py", title="Compare"),
        "notes": st.Page("views/notes.py", title="Notes & verdict"),
        "detectors": st.Page("views/detectors.py", title="Detectors"),
        "about": st.Page("views/about.py", title="About & scope"),
    }
    st.session_state["_pages"] = nav
    with st.sidebar:
        if identity is None:
            who.remember_in_browser()  # a new tab of this browser profile starts with the name
            st.text_input("Analyst", key=who.NAME, on_change=who.remember, max_chars=who.MAX_LENGTH,
                          help="recorded with every note, verdict and analysis; kept in this tab's address "
                               "across reloads. A typed name is a claim, not a sign-in.")
            st.caption(auth.LOCAL_BANNER)
        else:
            # Not keyed "analyst": that stays plain session state, set from the sign-in above.
            st.text_input("Analyst", value=identity, disabled=True, help="the signed-in account (team mode)")
            st.text(auth.team_banner(identity))  # IdP-supplied e-mail: plain text
            st.button("Log out", on_click=st.logout)
        warning = config.root_warning()
        if warning:
            st.warning(warning)
        st.text(history_line(store))
        st.caption(SCOPE_CAVEAT)
    page = st.navigation(list(nav.values()))
    if page.title != nav["review"].title:
        selection.set_playing(False)  # play belongs to the Review page
    for message in selection.pop_messages():
        st.warning(message)
    # A page change clears the URL's query parameters: put the selection back before the page
    # draws (a reload while it draws keeps the case and frame), and again after it changed them.
    selection.sync_url()
    who.sync_url()
    with errors.shown_plainly():
        page.run()
    selection.sync_url()
    who.sync_url()


def history_line(store) -> str:
    """One plain-text line on the audit history's integrity."""
    status = resources.history_status(store)
    if status["ok"]:
        return f"History verified ({status['entries']} entries)"
    return f"History BROKEN at entry {status['broken_at']}: {status['reason']}"


with errors.shown_plainly():
    main()

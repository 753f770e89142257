"""Who is writing: the signed-in account in team mode, else the name typed in the sidebar, kept in this tab's URL.

A typed name is a claim, not an authentication: it says who wrote a note and proves nothing.
Team mode (auth.py) records the signed-in, allowlisted e-mail instead, and nothing can be typed.
There is no fallback to the operating-system account: every write by a server running as `root`
was once filed under `root`. Without a name, notes, verdicts, new cases and evidence intake are
refused with a prompt.

Why the URL and the browser's storage: Streamlit's session state lives only as long as the tab's
connection, so a reload starts empty. The name is mirrored into the `analyst` query parameter, as
the selection is (selection.py), so reloading the tab keeps it; and a confirmed name is kept in the
browser profile's localStorage (a tiny component, `remember_in_browser`), so a new tab or a new
window of the same profile starts with it. A link copied from the address bar carries the name, so
a name that came from a URL is used only after the analyst confirms it once ("Continue as ..."),
unless this profile's storage holds the same name. Clearing the box (or "Not me") forgets it in
the profile too. In team mode the e-mail is never put in the URL or the storage.
"""
from __future__ import annotations

import streamlit as st
import streamlit.components.v2  # noqa: F401  (st.components.v2.component)

NAME = "analyst"  # the sidebar box's key in local mode; a plain session key in team mode
URL_KEY = "analyst"
MAX_LENGTH = 80
_SIGNED_IN = "_analyst_signed_in"
_FROM_URL = "_analyst_from_url"  # a name restored from a URL, not yet confirmed in this session
_RESTORED = "_analyst_restored_from_url"
_CLEARED = "_analyst_cleared"  # the analyst emptied the box (or said "Not me"): forget it in the profile too
STORAGE_KEY = "workbench.analyst"  # the browser profile's localStorage key

# Trusted, constant code (no user data is ever put into it): it reads the stored name and hands it
# to Python once when this session has none, writes a confirmed name, and forgets a cleared one.
# The name itself travels only as component data / state (JSON), never as HTML.
_MEMORY_JS = """
export default function (component) {
  const { data, setStateValue } = component;
  const key = %s;
  let stored = null;
  try { stored = window.localStorage.getItem(key); } catch (e) { return; }
  if (!data) { return; }
  if (data.forget) {
    if (stored !== null) { window.localStorage.removeItem(key); }
  } else if (data.name) {
    if (stored !== data.name) { window.localStorage.setItem(key, data.name); }
  } else if (stored && data.want) {
    setStateValue("stored", stored);
  }
}
""" % ('"' + STORAGE_KEY + '"')
_memory_component = None


def clean_name(raw) -> str | None:
    """A usable analyst name (trimmed), or None for an empty, over-long or control-character value.

    >>> clean_name("  Ana Lyst ")
    'Ana Lyst'
    >>> clean_name("a\\tb") is None, clean_name("") is None
    (True, True)
    """
    if not isinstance(raw, str):
        return None
    name = raw.strip()
    if not name or len(name) > MAX_LENGTH or not name.isprintable():
        return None
    return name


# -- set up by app.py, before the sidebar is drawn --------------------------------------------
def sign_in(email: str) -> None:
    """Team mode: the signed-in, allowlisted account is the analyst; nothing typed counts."""
    st.session_state[_SIGNED_IN] = email
    st.session_state[NAME] = email
    st.session_state.pop(_FROM_URL, None)


def restore_from_url() -> None:
    """Local mode, once per session, before the sidebar's Analyst box: take the name a reload left in the URL."""
    if st.session_state.get(_RESTORED):
        return
    st.session_state[_RESTORED] = True
    name = clean_name(st.query_params.get(URL_KEY))
    if name is not None and not clean_name(st.session_state.get(NAME)):
        st.session_state[NAME] = name
        st.session_state[_FROM_URL] = name


def remember() -> None:
    """on_change of the sidebar's Analyst box: a name typed in this tab needs no confirmation."""
    st.session_state.pop(_FROM_URL, None)
    st.session_state[_CLEARED] = clean_name(st.session_state.get(NAME)) is None


def _take_stored() -> None:
    """The profile's stored name arrived: use it when this session has none (or the same one, unconfirmed)."""
    stored = clean_name((st.session_state.get("_analyst_memory") or {}).get("stored"))
    if stored is None or st.session_state.get(_SIGNED_IN) or st.session_state.get(_CLEARED):
        return
    current = clean_name(st.session_state.get(NAME))
    if current is None:
        st.session_state[NAME] = stored
    if clean_name(st.session_state.get(NAME)) == stored:
        st.session_state.pop(_FROM_URL, None)  # this profile typed that name before: no need to confirm


def remember_in_browser() -> None:
    """Local mode, before the sidebar's Analyst box: keep a confirmed name in the browser profile.

    Mounts a zero-height component. It writes the confirmed name (writer()) to localStorage, forgets
    it when the analyst cleared the box, and otherwise, while this session has no confirmed name,
    offers the stored one back (applied by `_take_stored` before the box is drawn on the rerun).
    """
    global _memory_component
    if st.session_state.get(_SIGNED_IN):
        return
    if _memory_component is None:
        _memory_component = st.components.v2.component("workbench_analyst_memory", js=_MEMORY_JS)
    confirmed = writer()
    data = {"name": confirmed, "forget": bool(st.session_state.get(_CLEARED)) and confirmed is None,
            "want": confirmed is None}
    _memory_component(key="_analyst_memory", data=data, on_stored_change=_take_stored, height=0)


def sync_url() -> None:
    """Mirror the typed name into the URL (never the signed-in e-mail); a page change clears it otherwise."""
    name = None if st.session_state.get(_SIGNED_IN) else clean_name(st.session_state.get(NAME))
    if name is None:
        if URL_KEY in st.query_params:
            del st.query_params[URL_KEY]
    elif st.query_params.get(URL_KEY) != name:
        st.query_params[URL_KEY] = name


# -- read by the pages --------------------------------------------------------------------------
def name() -> str | None:
    """Who is working (signed-in e-mail or typed name), confirmed or not; None when nobody is named."""
    return st.session_state.get(_SIGNED_IN) or clean_name(st.session_state.get(NAME))


def writer() -> str | None:
    """The name to record a write under, or None while writes must be refused (see `refusal`)."""
    current = name()
    if current is None or (not st.session_state.get(_SIGNED_IN) and st.session_state.get(_FROM_URL) == current):
        return None
    return current


def refusal() -> str | None:
    """Why writes are refused right now, in one sentence; None when they are allowed."""
    current = name()
    if current is None:
        return ("Type your name in the sidebar's Analyst box first: notes, verdicts and new evidence are "
                "recorded under it.")
    if writer() is None:
        return (f"This tab's address says you are {current}. Confirm it (Continue as {current}) or type "
                "your own name in the sidebar before recording anything.")
    return None


_MARKDOWN_SPECIAL = set("\\`*_{}[]()<>#+-.!|~:$")


def markdown_literal(text: str) -> str:
    r"""Text shown literally where Streamlit renders Markdown (button labels): every Markdown
    character backslash-escaped, so a name that came from a link cannot become a link or an image.

    >>> print(markdown_literal("![x](u)"))
    \!\[x\]\(u\)
    """
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)


def _confirm() -> None:
    st.session_state.pop(_FROM_URL, None)


def _forget() -> None:
    # A callback runs before the sidebar box is drawn, so its key may still be changed here.
    st.session_state[NAME] = ""
    st.session_state.pop(_FROM_URL, None)
    st.session_state[_CLEARED] = True


def prompt() -> str | None:
    """Draw, above a page's forms, why writes are refused and how to fix it; return the writer (or None)."""
    who = writer()
    if who is not None:
        return who
    st.warning(refusal())
    current = name()
    if current is not None:  # a name from a URL: one click to confirm, one to drop it
        cols = st.columns(2)
        cols[0].button(f"Continue as {markdown_literal(current)}", on_click=_confirm, key="analyst_confirm")
        cols[1].button("Not me", on_click=_forget, key="analyst_forget")
    return None


def refuse_write() -> str | None:
    """At a write: the writer, or None after showing the refusal as an error (nothing is written)."""
    who = writer()
    if who is None:
        st.error(f"Not recorded. {refusal()}")
    return who
